//! Containers and their processes: the agent's table of what it created, and the
//! operations on it. The mechanics of create/start/exec/delete run in the runtime helper
//! ([`crate::runtime`]); signals, waits, freezing, resources and stats are done here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use hull_protocol::rpc::agent::{Event, ExitEvent, OomEvent, Stdio};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use super::cgroup::Cgroup;
use super::stdio::{self, ProcessIo};
use super::AgentError;
use crate::reaper::Exit;

/// One process the agent started: a container's init or an exec.
pub struct Process {
    pub pid: u32,
    pub io: Mutex<ProcessIo>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
}

impl Process {
    pub fn new(pid: u32, io: ProcessIo) -> Arc<Self> {
        Arc::new(Process {
            pid,
            io: Mutex::new(io),
            exit: Mutex::new(None),
            exited: Condvar::new(),
        })
    }

    pub fn set_exit(&self, exit: Exit) {
        *lock(&self.exit) = Some(exit);
        self.exited.notify_all();
    }

    pub fn exit(&self) -> Option<Exit> {
        *lock(&self.exit)
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self.exited.wait(exit).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn io(&self) -> MutexGuard<'_, ProcessIo> {
        lock(&self.io)
    }
}

pub use hull_protocol::lock;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub cgroup: Cgroup,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Start needs no process of its own (no poststart hooks to run and wait for): the
    /// agent tells init to go itself instead of running the helper.
    pub start_in_agent: bool,
}

impl Container {
    /// The init process (empty `exec_id`) or the named exec.
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        lock(&self.execs).get(exec_id).cloned().ok_or_else(|| {
            AgentError::NotFound(format!("exec {exec_id:?} in container {:?}", self.id))
        })
    }
}

/// The event published when a process exits.
pub fn exit_event(container_id: &str, exec_id: &str, exit: &Exit) -> Event {
    let mut e = ExitEvent::new();
    e.container_id = container_id.to_owned();
    e.exec_id = exec_id.to_owned();
    e.pid = exit.pid as u32;
    e.exit_status = exit.status;
    e.exited_at_nanos = exit.at_nanos;
    let mut event = Event::new();
    event.set_exit(e);
    event
}

pub fn oom_event(container_id: &str) -> Event {
    let mut o = OomEvent::new();
    o.container_id = container_id.to_owned();
    let mut event = Event::new();
    event.set_oom(o);
    event
}

/// What the sandbox imposes on every container's spec.
#[derive(Clone)]
pub struct Rewrite<'a> {
    pub rootfs: &'a Path,
    pub cgroup_path: &'a Path,
    /// `/proc/<pid>/ns/pid` of the sandbox's shared PID namespace, if it has one yet.
    pub shared_pid_ns: Option<PathBuf>,
    /// Sandbox files to bind into the container: (destination, source).
    pub files: Vec<(&'static str, PathBuf)>,
}

/// Adapts a host-made spec to the guest: the canonical rootfs, the agent's cgroup layout,
/// namespace paths (which name host namespaces) replaced, sandbox files bound in.
pub fn rewrite_spec(spec: &mut Spec, rw: &Rewrite<'_>) -> Result<(), AgentError> {
    if let Some(root) = spec.root_mut() {
        root.set_path(rw.rootfs.to_owned());
    }
    let mut shares_guest_uts = false;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(rw.cgroup_path.to_owned()));
    if let Some(namespaces) = linux.namespaces_mut() {
        let mut kept = Vec::with_capacity(namespaces.len());
        for (i, ns) in namespaces.drain(..).enumerate() {
            let Some(path) = ns.path().clone() else {
                kept.push(ns);
                continue;
            };
            match ns.typ() {
                // A pod shares the VM's network, UTS and IPC namespaces: the guest's own.
                LinuxNamespaceType::Uts => shares_guest_uts = true,
                LinuxNamespaceType::Network | LinuxNamespaceType::Ipc => {}
                LinuxNamespaceType::Pid => match &rw.shared_pid_ns {
                    Some(shared) => {
                        let mut ns = ns;
                        ns.set_path(Some(shared.clone()));
                        kept.push(ns);
                    }
                    None => {
                        return Err(AgentError::invalid(
                            format!("linux.namespaces[{i}].path"),
                            format!(
                                "{} names a host PID namespace; create the sandbox with shared_pid_namespace to share one",
                                path.display()
                            ),
                        ))
                    }
                },
                other => {
                    return Err(AgentError::invalid(
                        format!("linux.namespaces[{i}].path"),
                        format!("{} names a host {other:?} namespace, which the guest cannot join", path.display()),
                    ))
                }
            }
        }
        *namespaces = kept;
    }
    if shares_guest_uts {
        // The sandbox's hostname applies; setting one needs a UTS namespace of its own.
        spec.set_hostname(None);
        spec.set_domainname(None);
    }
    if !rw.files.is_empty() {
        let readonly = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let mounts = spec.mounts_mut().get_or_insert_with(Vec::new);
        for (dest, source) in &rw.files {
            match mounts
                .iter_mut()
                .find(|m| m.destination() == Path::new(dest))
            {
                Some(m) => {
                    m.set_source(Some(source.clone()));
                    m.set_typ(Some("bind".into()));
                }
                // Bind onto a file only where one exists or can be created: a read-only
                // rootfs without /etc/hosts keeps its own (missing) file.
                None if !bind_target_usable(rw.rootfs, dest, readonly) => {}
                None => {
                    let mut m = Mount::default();
                    m.set_destination(PathBuf::from(dest));
                    m.set_typ(Some("bind".into()));
                    m.set_source(Some(source.clone()));
                    m.set_options(Some(vec![
                        "rbind".into(),
                        "ro".into(),
                        "nosuid".into(),
                        "nodev".into(),
                    ]));
                    mounts.push(m);
                }
            }
        }
    }
    Ok(())
}

/// Whether `dest` (like /etc/hosts) exists as a file in `rootfs`, or can be created there.
fn bind_target_usable(rootfs: &Path, dest: &str, readonly: bool) -> bool {
    let path = rootfs.join(dest.trim_start_matches('/'));
    match std::fs::symlink_metadata(&path) {
        Ok(m) => m.is_file(),
        Err(_) => !readonly && path.parent().is_some_and(|p| p.is_dir()),
    }
}

/// Checks that the request's stdio and the OCI process agree about a terminal.
pub fn check_terminal(
    stdio: &Stdio,
    process_terminal: bool,
    field: &str,
) -> Result<(), AgentError> {
    if stdio.terminal != process_terminal {
        return Err(AgentError::invalid(
            "stdio.terminal",
            format!(
                "is {} but {field}.terminal is {process_terminal}; they must agree",
                stdio.terminal
            ),
        ));
    }
    Ok(())
}

/// Stdio for a process about to be created, with errors as agent errors.
pub fn prepare_stdio(stdio: &Stdio, dir: &Path, name: &str) -> Result<stdio::Prepared, AgentError> {
    stdio::prepare(stdio, dir, name)
        .map_err(|e| AgentError::Internal(format!("setting up stdio: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn host_namespace_paths_are_replaced() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"/x"},
                "mounts":[{"destination":"/etc/hosts","type":"bind","source":"/var/lib/kubelet/pods/p/etc-hosts"}],
                "linux":{"namespaces":[
                {"type":"network","path":"/var/run/netns/cni-1"},{"type":"ipc","path":"/proc/9/ns/ipc"},
                {"type":"mount"},{"type":"pid","path":"/proc/9/ns/pid"}]}}"#,
        );
        let rw = Rewrite {
            rootfs: Path::new("/run/hull/shared/c1"),
            cgroup_path: Path::new("/hull/c1"),
            shared_pid_ns: Some("/proc/42/ns/pid".into()),
            files: vec![("/etc/hosts", "/run/hull/sandbox/hosts".into())],
        };
        rewrite_spec(&mut s, &rw).unwrap();
        let linux = s.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect();
        assert_eq!(
            ns,
            vec![
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, Some("/proc/42/ns/pid".into()))
            ]
        );
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/hull/c1")));
        assert_eq!(
            s.root().as_ref().unwrap().path(),
            Path::new("/run/hull/shared/c1")
        );
        let m = &s.mounts().as_ref().unwrap()[0];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/hull/sandbox/hosts"))
        );

        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/9/ns/pid"}]}}"#,
        );
        let rw = Rewrite {
            shared_pid_ns: None,
            files: vec![],
            ..rw
        };
        let err = rewrite_spec(&mut s, &rw).unwrap_err().to_string();
        assert!(
            err.contains("linux.namespaces[0].path") && err.contains("shared_pid_namespace"),
            "{err}"
        );
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"user","path":"/proc/9/ns/user"}]}}"#,
        );
        assert!(rewrite_spec(&mut s, &rw).is_err());
    }
}
