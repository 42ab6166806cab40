//! An agent served on this host (`hull-agent serve`) with a busybox rootfs area, for the
//! host-mode tests: real namespaces, cgroups and mounts, so they need root.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hull_e2e::agent_work::ServedAgent;
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::agent_ttrpc::AgentClient;
use hull_protocol::rpc::{ttrpc, Endpoint};
use hull_protocol::stream::{Header, Kind};
use serde_json::{json, Value};

pub const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "true", "false", "stty", "id", "touch", "mkdir", "dd", "ls",
    "head", "tr", "wc", "ip", "grep", "pwd",
];

/// Whether this test can run; prints why not (the test then passes as skipped, saying so).
pub fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: {test}: needs root (namespaces, cgroups, mounts)");
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        eprintln!("skipped: {test}: {BUSYBOX} missing (apt-get install busybox-static)");
        return false;
    }
    true
}

pub struct Agent {
    pub dir: tempfile::TempDir,
    served: ServedAgent,
    pub client: AgentClient,
    pub endpoint: Endpoint,
    pub cgroup_parent: String,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

impl Agent {
    /// Starts an agent with a sandbox (default settings).
    pub fn start() -> Agent {
        Agent::start_with(&CreateSandboxRequest::new())
    }

    pub fn start_with(sandbox: &CreateSandboxRequest) -> Agent {
        let agent = Agent::start_bare();
        agent
            .client
            .create_sandbox(ctx(), sandbox)
            .expect("CreateSandbox");
        agent
    }

    pub fn start_bare() -> Agent {
        let dir = tempfile::Builder::new()
            .prefix("hull-agent-test")
            .tempdir()
            .unwrap();
        let cgroup_parent = format!(
            "hull-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let served = ServedAgent::start(
            Path::new(env!("CARGO_BIN_EXE_hull-agent")),
            dir.path(),
            &cgroup_parent,
        )
        .unwrap_or_else(|e| panic!("agent did not come up: {e}"));
        Agent {
            dir,
            client: served.client.clone(),
            endpoint: served.endpoint.clone(),
            served,
            cgroup_parent,
        }
    }

    pub fn pid(&self) -> u32 {
        self.served.pid()
    }

    /// A fresh busybox rootfs named `name` in the rootfs area.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.rootfs_of(name);
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        root
    }

    /// Where [`Agent::rootfs`] puts rootfs `name`.
    pub fn rootfs_of(&self, name: &str) -> PathBuf {
        self.dir.path().join("rootfs").join(name)
    }

    /// Creates container `id` running `args` in a fresh rootfs, with `edit` applied to the
    /// spec; returns its init PID.
    pub fn create(
        &self,
        id: &str,
        args: &[&str],
        stdio: Stdio,
        edit: impl FnOnce(&mut Value),
    ) -> Result<u32, ttrpc::Error> {
        let root = self.rootfs(id);
        let mut spec = spec(&root, args);
        spec["process"]["terminal"] = json!(stdio.terminal);
        edit(&mut spec);
        self.create_raw(id, serde_json::to_vec(&spec).unwrap(), stdio)
    }

    pub fn create_raw(&self, id: &str, json: Vec<u8>, stdio: Stdio) -> Result<u32, ttrpc::Error> {
        let mut req = CreateContainerRequest::new();
        req.container_id = id.into();
        req.oci_spec_json = json;
        req.stdio = Some(stdio).into();
        self.client.create_container(ctx(), &req).map(|r| r.pid)
    }

    pub fn start_container(&self, id: &str) {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        self.client
            .start_container(ctx(), &req)
            .expect("StartContainer");
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> WaitProcessResponse {
        let mut req = ProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        self.client.wait_process(ctx(), &req).expect("WaitProcess")
    }

    pub fn stream(&self, kind: Kind, id: &str, exec_id: &str) -> UnixStream {
        self.endpoint
            .open_stream(&Header::new(kind, id, exec_id))
            .expect("open stream")
    }

    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), ttrpc::Error> {
        let mut req = SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = signal as u32;
        req.all = all;
        self.client.signal_process(ctx(), &req).map(|_| ())
    }

    pub fn remove(&self, id: &str) {
        let mut req = ContainerRequest::new();
        req.container_id = id.into();
        self.client
            .remove_container(ctx(), &req)
            .expect("RemoveContainer");
    }

    /// Runs `args` to completion with stdout and stderr captured: (status, stdout, stderr).
    pub fn run(
        &self,
        id: &str,
        args: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> (i32, String, String) {
        self.create(id, args, out_err(), edit)
            .expect("CreateContainer");
        let out = self.stream(Kind::Stdout, id, "");
        let err = self.stream(Kind::Stderr, id, "");
        self.start_container(id);
        let status = self.wait(id, "").exit_status;
        let (out, err) = (read_all(out), read_all(err));
        self.remove(id);
        (status, out, err)
    }

    /// The container's cgroup directories that exist (v1 hierarchies or the v2 tree).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        self.served.cgroup_dirs()
    }

    /// Stops the agent (SIGTERM: it removes what is left) and checks it left nothing.
    pub fn stop(mut self) {
        let status = self.served.stop().expect("the agent was running");
        assert!(status.success(), "agent exited with {status}");
        // Every container process lived in a cgroup below the parent; a cgroup with a
        // process in it cannot be removed, so none left means no process left either.
        self.served.remove_cgroups();
        let left = self.cgroup_dirs();
        assert!(left.is_empty(), "cgroups left behind: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.dir.path().to_string_lossy().into_owned();
        assert!(!mounts.contains(&dir), "mounts left behind under {dir}");
    }
}

/// A runc-like default spec (namespaces, mounts, masked paths, capabilities) running `args`.
pub fn spec(root: &Path, args: &[&str]) -> Value {
    let mut spec = serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap();
    spec["root"] = json!({"path": root, "readonly": false});
    spec["process"]["args"] = json!(args);
    spec["process"]["env"] = json!(["PATH=/bin", "HOME=/root"]);
    spec["process"]["cwd"] = json!("/");
    spec["hostname"] = json!("box");
    spec
}

pub fn out_err() -> Stdio {
    let mut s = Stdio::new();
    s.stdout = true;
    s.stderr = true;
    s
}

pub fn read_all(mut s: UnixStream) -> String {
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

pub fn write_all(s: &mut UnixStream, bytes: &[u8]) {
    s.write_all(bytes).unwrap();
}

/// The RPC status code and message of a failed call.
pub fn status(err: ttrpc::Error) -> (ttrpc::Code, String) {
    match err {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_owned()),
        other => panic!("not an RPC status: {other:?}"),
    }
}
