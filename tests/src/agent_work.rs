//! The agent's work per container operation, counted on the host: `hull-agent serve` (the
//! agent's host mode, root) runs a container's lifecycle or an exec while strace follows
//! every thread and process it has or makes, and `/proc` counts its page faults.
//!
//! On a host whose KVM emulates guest kernel code, each system call and page fault of the
//! agent in a guest costs about a millisecond, so these counts are what a container's start
//! waits for there; on any host they are the kernel work a container costs. Counts, unlike
//! times, do not depend on the machine's load, so they can be held to a budget in a test
//! (tests/tests/agent_budget.rs) as well as printed by bench-agent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::agent_ttrpc::AgentClient;
use hull_protocol::rpc::{connect_within, ttrpc, Endpoint};
use serde_json::json;

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(600).as_nanos() as i64)
}

/// A `hull-agent serve` process (the agent's host mode: RPC and streams on unix sockets,
/// containers made with this host's namespaces and cgroups; root only). Dropping it stops
/// the agent (SIGTERM: it removes what is left) and removes the parent cgroup it was given.
pub struct ServedAgent {
    pub client: AgentClient,
    pub endpoint: Endpoint,
    /// The cgroup, below the root of each hierarchy, that the agent's containers go under.
    pub cgroup_parent: String,
    child: Option<Child>,
}

impl ServedAgent {
    /// Serves `bin` on `dir`, which gets `sockets/`, `state/` and the rootfs area
    /// `rootfs/`; containers go below the cgroup `cgroup_parent`.
    pub fn start(bin: &Path, dir: &Path, cgroup_parent: &str) -> Result<ServedAgent> {
        for d in ["sockets", "state", "rootfs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let child = Command::new(bin)
            .arg("serve")
            .arg("--socket-dir")
            .arg(dir.join("sockets"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--rootfs-area")
            .arg(dir.join("rootfs"))
            .arg("--cgroup-parent")
            .arg(cgroup_parent)
            .stdin(ProcStdio::null())
            .spawn()
            .with_context(|| format!("starting {} serve", bin.display()))?;
        let endpoint = Endpoint::UnixDir(dir.join("sockets"));
        match connect_within(
            &endpoint,
            Duration::from_secs(20),
            Duration::from_millis(20),
        ) {
            Ok(conn) => Ok(ServedAgent {
                client: conn.client,
                endpoint,
                cgroup_parent: cgroup_parent.to_owned(),
                child: Some(child),
            }),
            Err(e) => {
                stop(child);
                bail!("hull-agent serve never answered: {e}")
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM and waits (20 s, then SIGKILL); the exit status, None if it was
    /// stopped already.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.child.take().and_then(stop)
    }

    /// The agent's parent cgroup in each hierarchy where it exists.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let root = Path::new("/sys/fs/cgroup");
        let mut candidates = vec![root.join(&self.cgroup_parent)];
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            candidates.push(e.path().join(&self.cgroup_parent));
        }
        candidates.into_iter().filter(|p| p.is_dir()).collect()
    }

    /// Removes the (empty) parent cgroup in every hierarchy.
    pub fn remove_cgroups(&self) {
        for dir in self.cgroup_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

impl Drop for ServedAgent {
    fn drop(&mut self) {
        self.stop();
        self.remove_cgroups();
    }
}

/// A served agent in a directory of its own with a busybox rootfs and a sandbox made.
pub struct HostAgent {
    pub served: ServedAgent,
    /// The busybox rootfs containers run from.
    pub rootfs: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostAgent {
    /// Starts `agent` (a `hull-agent` binary); root only.
    pub fn start(agent: &Path) -> Result<HostAgent> {
        let dir = tempfile::Builder::new()
            .prefix("hull-agent-work")
            .tempdir()?;
        let parent = format!("hull-agent-work-{}", std::process::id());
        let served = ServedAgent::start(agent, dir.path(), &parent)?;
        let rootfs = dir.path().join("rootfs/busybox");
        busybox_rootfs(&rootfs)?;
        served
            .client
            .create_sandbox(ctx(), &CreateSandboxRequest::new())?;
        Ok(HostAgent {
            served,
            rootfs,
            _dir: dir,
        })
    }

    pub fn client(&self) -> &AgentClient {
        &self.served.client
    }

    pub fn pid(&self) -> u32 {
        self.served.pid()
    }

    /// The agent's spec for `args` on the busybox rootfs (runc's defaults).
    pub fn spec(&self, args: &[&str]) -> serde_json::Value {
        spec(&self.rootfs, args, true)
    }
}

/// SIGTERM to `child`, then its exit status (SIGKILL after 20 s).
fn stop(mut child: Child) -> Option<std::process::ExitStatus> {
    // SAFETY: kill(2) of our own child; no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                return child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => return None,
        }
    }
}

/// A busybox tree at `root` (Debian's static busybox) with `sh`, `true` and `sleep`.
pub fn busybox_rootfs(root: &Path) -> Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox (apt-get install busybox-static)")?;
    for a in ["sh", "true", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a))?;
    }
    Ok(())
}

/// runc's default spec (namespaces, mounts, masked paths, capabilities) with `args` on
/// `root`: what both runtimes get in bench-agent.
pub fn spec(root: &Path, args: &[&str], readonly: bool) -> serde_json::Value {
    let mut s = runc_default_spec();
    s["root"] = json!({"path": root, "readonly": readonly});
    s["process"]["args"] = json!(args);
    s["process"]["terminal"] = json!(false);
    s["process"]["env"] = json!(["PATH=/bin"]);
    s["hostname"] = json!("bench");
    s
}

/// `runc spec`'s default config.json.
pub fn runc_default_spec() -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let ok = Command::new("runc")
        .current_dir(dir.path())
        .arg("spec")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(ok, "`runc spec` failed: apt-get install runc");
    serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap()
}

/// Creates and starts container `id` with no stdio.
pub fn create_and_start(agent: &AgentClient, id: &str, spec: &serde_json::Value) -> Result<()> {
    let mut req = CreateContainerRequest::new();
    req.container_id = id.into();
    req.oci_spec_json = serde_json::to_vec(spec)?;
    req.stdio = Some(Stdio::new()).into();
    agent.create_container(ctx(), &req)?;
    let mut c = ContainerRequest::new();
    c.container_id = id.into();
    agent.start_container(ctx(), &c)?;
    Ok(())
}

/// What `runc run` does: create, start, wait (exit 0 required) and delete container `id`.
pub fn create_start_wait(
    agent: &AgentClient,
    id: &str,
    spec: &serde_json::Value,
) -> Result<Duration> {
    let t = Instant::now();
    create_and_start(agent, id, spec)?;
    let mut w = ProcessRequest::new();
    w.container_id = id.into();
    let exit = agent.wait_process(ctx(), &w)?;
    if exit.exit_status != 0 {
        bail!("container {id} exited {}", exit.exit_status);
    }
    let mut c = ContainerRequest::new();
    c.container_id = id.into();
    agent.remove_container(ctx(), &c)?;
    Ok(t.elapsed())
}

/// Runs `true` as exec `exec_id` in running container `id` and waits for it (exit 0).
pub fn exec_wait(agent: &AgentClient, id: &str, exec_id: &str) -> Result<Duration> {
    let t = Instant::now();
    let mut req = ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.oci_process_json = serde_json::to_vec(&json!({
        "args": ["true"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    }))?;
    req.stdio = Some(Stdio::new()).into();
    agent.exec_process(ctx(), &req)?;
    let mut w = ProcessRequest::new();
    w.container_id = id.into();
    w.exec_id = exec_id.into();
    let exit = agent.wait_process(ctx(), &w)?;
    if exit.exit_status != 0 {
        bail!("exec {exec_id} exited {}", exit.exit_status);
    }
    Ok(t.elapsed())
}

/// The kernel work of one operation, across the agent's threads and every process it
/// made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub syscalls: u64,
    /// Processes created (fork, vfork, clone without CLONE_THREAD).
    pub processes: u64,
    /// Threads created (clone with CLONE_THREAD).
    pub threads: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
}

/// Whether strace is installed (counting needs it).
pub fn strace_available() -> bool {
    Command::new("strace").arg("-V").output().is_ok()
}

/// Runs `f` twice around the agent `pid`: once under strace following every thread and
/// child (system calls, processes and threads made), once untraced for the page faults of
/// the agent and the children it reaped (ptrace would add its own).
pub fn measure(pid: u32, mut f: impl FnMut(u32) -> Result<()>) -> Result<Work> {
    let mut work = traced(pid, || f(0))?;
    let before = faults(pid)?;
    f(1)?;
    let after = faults(pid)?;
    work.minor_faults = after.0 - before.0;
    work.major_faults = after.1 - before.1;
    Ok(work)
}

/// The agent's own page faults plus those of its reaped children: (minor, major).
fn faults(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start at field 3, `state`.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| -> u64 { rest.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
    // minflt (10), cminflt (11), majflt (12), cmajflt (13).
    Ok((field(10) + field(11), field(12) + field(13)))
}

fn traced(pid: u32, f: impl FnOnce() -> Result<()>) -> Result<Work> {
    let out = tempfile::NamedTempFile::new()?;
    let mut tracer = Command::new("strace");
    tracer.args(["-f", "-q", "-o"]).arg(out.path());
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        tracer.arg("-p").arg(task.file_name());
    }
    let mut tracer = tracer.stderr(ProcStdio::null()).spawn().context("strace")?;
    // strace attaches to each thread before it reports anything; give it that long.
    std::thread::sleep(Duration::from_millis(500));
    let result = f();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill(2) of our own child; no memory effects.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    tracer.wait()?;
    result?;
    Ok(count_trace(&std::fs::read_to_string(out.path())?))
}

/// Counts an `strace -f` log: each call once (an `<unfinished ...>` line, not its
/// `<... resumed>` one), and the processes and threads the clones made.
pub fn count_trace(log: &str) -> Work {
    let mut w = Work::default();
    for line in log.lines() {
        // "PID  CALL(ARGS) = RESULT", "PID  CALL(ARGS <unfinished ...>",
        // "PID  <... CALL resumed>...", "PID  --- SIGCHLD ...", "PID  +++ exited ...".
        let Some(call) = line.split_once(' ').map(|(_, r)| r.trim_start()) else {
            continue;
        };
        if call.starts_with("<...") || call.starts_with("---") || call.starts_with("+++") {
            continue;
        }
        let Some((name, _)) = call.split_once('(') else {
            continue;
        };
        w.syscalls += 1;
        let failed = line.contains(") = -1 ");
        match name {
            "fork" | "vfork" if !failed => w.processes += 1,
            "clone" | "clone3" if !failed => {
                if call.contains("CLONE_THREAD") {
                    w.threads += 1;
                } else {
                    w.processes += 1;
                }
            }
            _ => {}
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_counts_each_call_once_and_tells_threads_from_processes() {
        let log = "\
10  futex(0x1, FUTEX_WAIT_BITSET_PRIVATE, 1, NULL, FUTEX_BITSET_MATCH_ANY <unfinished ...>
11  clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, stack=0x7f, stack_size=0x1000}, 88) = 12
10  <... futex resumed>) = 0
11  clone3({flags=CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88 <unfinished ...>
13  execve(\"/proc/self/exe\", [\"/proc/self/exe\"], 0x7f /* 2 vars */) = 0
11  <... clone3 resumed>) = 13
13  clone(child_stack=NULL, flags=CLONE_NEWNS|SIGCHLD) = 14
13  clone(child_stack=NULL, flags=SIGCHLD) = -1 EAGAIN (Resource temporarily unavailable)
14  --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---
14  +++ exited with 0 +++
";
        let w = count_trace(log);
        assert_eq!(w.syscalls, 6);
        assert_eq!(w.threads, 1);
        assert_eq!(w.processes, 2);
    }
}
