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
    /// Signals (bit N-1 for signal N) kept for re-delivery ([`super::signal`]).
    pub pending_signals: Mutex<u64>,
}

impl Process {
    pub fn new(pid: u32, io: ProcessIo) -> Arc<Self> {
        Arc::new(Process {
            pid,
            io: Mutex::new(io),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            pending_signals: Mutex::new(0),
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

    /// The exit, waiting at most `limit` for it.
    pub fn wait_timeout(&self, limit: std::time::Duration) -> Option<Exit> {
        let exit = lock(&self.exit);
        let (exit, _) = self
            .exited
            .wait_timeout_while(exit, limit, |e| e.is_none())
            .unwrap_or_else(|p| p.into_inner());
        *exit
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
    /// Delete needs no process of its own either (no poststop hooks): the agent kills
    /// what is left, removes the cgroup and the runtime's state itself.
    pub delete_in_agent: bool,
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
    /// The pod's running containers: init pid (as the host was told it) to container id.
    /// A namespace path `/proc/<pid>/ns/<kind>` naming one of them joins its namespace.
    pub members: HashMap<u32, String>,
    /// Sandbox files to bind into the container: (destination, source).
    pub files: Vec<(&'static str, PathBuf)>,
}

/// What a namespace path in a host-made spec means in the guest.
#[derive(Debug, PartialEq)]
enum NamespacePath {
    /// `/proc/<pid>/ns/<kind>` of a running container of this pod: the same path names
    /// that container's namespace in the guest, since the pids the host knows are the
    /// guest's.
    Member(u32),
    /// Any other network namespace: the one the host attached the VM to (a CRI pod's
    /// netns). In the guest that is the VM's own network.
    VmNetwork,
}

/// The name a namespace kind has under `/proc/<pid>/ns/`.
fn proc_ns_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Time => "time",
    }
}

/// Resolves the namespace path at `linux.namespaces[index]`, or says why the guest
/// cannot honour it.
fn resolve_namespace_path(
    index: usize,
    kind: LinuxNamespaceType,
    path: &Path,
    members: &HashMap<u32, String>,
) -> Result<NamespacePath, AgentError> {
    let name = proc_ns_name(kind);
    let member = path
        .to_str()
        .and_then(|p| p.strip_prefix("/proc/"))
        .and_then(|p| p.strip_suffix(&format!("/ns/{name}")))
        .and_then(|pid| pid.parse::<u32>().ok())
        .filter(|pid| members.contains_key(pid));
    if let Some(pid) = member {
        return Ok(NamespacePath::Member(pid));
    }
    if kind == LinuxNamespaceType::Network {
        return Ok(NamespacePath::VmNetwork);
    }
    Err(AgentError::invalid(
        format!("linux.namespaces[{index}].path"),
        format!(
            "{} is not the {name} namespace of a running container of this pod (/proc/<its pid>/ns/{name}); \
             a VM cannot join a host {kind:?} namespace",
            path.display()
        ),
    ))
}

/// Adapts a host-made spec to the guest: the canonical rootfs, the agent's cgroup layout,
/// namespace paths resolved (a pod member's namespaces are joined, the pod's network is the
/// VM's), sandbox files bound in.
pub fn rewrite_spec(spec: &mut Spec, rw: &Rewrite<'_>) -> Result<(), AgentError> {
    if let Some(root) = spec.root_mut() {
        root.set_path(rw.rootfs.to_owned());
    }
    let mut joins_uts = false;
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_cgroups_path(Some(rw.cgroup_path.to_owned()));
    if let Some(namespaces) = linux.namespaces_mut() {
        let mut kept = Vec::with_capacity(namespaces.len());
        for (i, ns) in namespaces.drain(..).enumerate() {
            let Some(path) = ns.path().clone() else {
                kept.push(ns);
                continue;
            };
            match resolve_namespace_path(i, ns.typ(), &path, &rw.members)? {
                NamespacePath::Member(pid) => {
                    joins_uts |= ns.typ() == LinuxNamespaceType::Uts;
                    // Exactly the path that was checked, whatever spelling was sent.
                    let mut ns = ns;
                    ns.set_path(Some(PathBuf::from(format!(
                        "/proc/{pid}/ns/{}",
                        proc_ns_name(ns.typ())
                    ))));
                    kept.push(ns);
                }
                NamespacePath::VmNetwork => {}
            }
        }
        *namespaces = kept;
    }
    if joins_uts {
        // The joined namespace has the pod's hostname already; setting one is its owner's.
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

/// Stdio for a process about to be created (a terminal's console socket in
/// `console_dir`), with errors as agent errors.
pub fn prepare_stdio(stdio: &Stdio, console_dir: &Path) -> Result<stdio::Prepared, AgentError> {
    stdio::prepare(stdio, console_dir)
        .map_err(|e| AgentError::Internal(format!("setting up stdio: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: &str) -> Spec {
        serde_json::from_str(json).unwrap()
    }

    fn namespaces(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
        s.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().clone()))
            .collect()
    }

    fn pod_of(pid: u32) -> Rewrite<'static> {
        Rewrite {
            rootfs: Path::new("/run/hull/shared/c1"),
            cgroup_path: Path::new("/hull/c1"),
            members: HashMap::from([(pid, "pause".to_owned())]),
            files: vec![("/etc/hosts", "/run/hull/sandbox/hosts".into())],
        }
    }

    #[test]
    fn a_cri_container_joins_its_pause_containers_namespaces() {
        // What containerd's CRI sends for a container of a pod with pod-level PID
        // sharing: the pause container's namespaces by /proc path.
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","root":{"path":"/x"},"hostname":"pod-1",
                "mounts":[{"destination":"/etc/hosts","type":"bind","source":"/var/lib/kubelet/pods/p/etc-hosts"}],
                "linux":{"namespaces":[
                {"type":"network","path":"/proc/9/ns/net"},{"type":"ipc","path":"/proc/9/ns/ipc"},
                {"type":"uts","path":"/proc/9/ns/uts"},{"type":"mount"},
                {"type":"pid","path":"/proc/9/ns/pid"}]}}"#,
        );
        rewrite_spec(&mut s, &pod_of(9)).unwrap();
        assert_eq!(
            namespaces(&s),
            vec![
                (LinuxNamespaceType::Network, Some("/proc/9/ns/net".into())),
                (LinuxNamespaceType::Ipc, Some("/proc/9/ns/ipc".into())),
                (LinuxNamespaceType::Uts, Some("/proc/9/ns/uts".into())),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into())),
            ]
        );
        assert_eq!(s.hostname(), &None, "the joined UTS namespace has its name");
        let linux = s.linux().as_ref().unwrap();
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
    }

    #[test]
    fn a_joined_namespace_is_named_exactly_as_it_was_checked() {
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","linux":{"namespaces":[{"type":"pid","path":"/proc/0009/ns/pid"}]}}"#,
        );
        rewrite_spec(&mut s, &pod_of(9)).unwrap();
        assert_eq!(
            namespaces(&s),
            vec![(LinuxNamespaceType::Pid, Some("/proc/9/ns/pid".into()))]
        );
    }

    #[test]
    fn the_pods_host_network_namespace_is_the_vms_network() {
        // The pause container's spec names the netns CNI set up on the host.
        let mut s = spec(
            r#"{"ociVersion":"1.0.2","hostname":"pod-1","linux":{"namespaces":[
                {"type":"network","path":"/var/run/netns/cni-1"},{"type":"ipc"},{"type":"uts"},
                {"type":"mount"},{"type":"pid"}]}}"#,
        );
        rewrite_spec(&mut s, &pod_of(9)).unwrap();
        assert_eq!(
            namespaces(&s),
            vec![
                (LinuxNamespaceType::Ipc, None),
                (LinuxNamespaceType::Uts, None),
                (LinuxNamespaceType::Mount, None),
                (LinuxNamespaceType::Pid, None),
            ]
        );
        assert_eq!(s.hostname().as_deref(), Some("pod-1"));
    }

    #[test]
    fn a_namespace_path_outside_the_pod_is_refused_by_name() {
        for (json, says) in [
            // Not a container of this pod (or one that has exited).
            (
                r#"{"type":"pid","path":"/proc/10/ns/pid"}"#,
                "/proc/10/ns/pid is not the pid namespace",
            ),
            (
                r#"{"type":"pid","path":"/proc/1/ns/pid"}"#,
                "a VM cannot join a host Pid namespace",
            ),
            (
                r#"{"type":"ipc","path":"/run/ipcns/x"}"#,
                "not the ipc namespace",
            ),
            (
                r#"{"type":"uts","path":"/proc/10/ns/uts"}"#,
                "not the uts namespace",
            ),
            // A member's namespace, but of another kind than the entry says.
            (
                r#"{"type":"pid","path":"/proc/9/ns/ipc"}"#,
                "not the pid namespace",
            ),
            (
                r#"{"type":"pid","path":"/proc/9/ns/pid/../../10/ns/pid"}"#,
                "not the pid namespace",
            ),
            (
                r#"{"type":"user","path":"/proc/1/ns/user"}"#,
                "host User namespace",
            ),
            (
                r#"{"type":"mount","path":"/proc/1/ns/mnt"}"#,
                "host Mount namespace",
            ),
        ] {
            let mut s = spec(&format!(
                r#"{{"ociVersion":"1.0.2","linux":{{"namespaces":[{{"type":"mount"}},{json}]}}}}"#
            ));
            let err = rewrite_spec(&mut s, &pod_of(9)).unwrap_err().to_string();
            assert!(
                err.contains("linux.namespaces[1].path") && err.contains(says),
                "{json}: {err}"
            );
        }
    }
}
