//! bench-agent: how long the agent takes to run a trivial container and an exec, side by
//! side with `runc` on the same bundle, and how many syscalls each needs.
//!
//! - host: `hull-agent serve` on this machine (RPC over a unix socket) against `runc run`
//!   and `runc exec` of the same busybox bundle (Debian's runc). create+start+wait+delete
//!   of `true` (what `runc run` does), then exec+wait of `true` in a running container.
//! - syscalls: one create+start+wait (and one exec) traced with `strace -f -c` across the
//!   agent, its runtime helper and the container, and the same for runc; in a guest whose
//!   kernel is emulated every one of them costs real time, so this count is what the guest
//!   latency follows.
//! - guest: the same operations through the hybrid vsock against the agent in a VM booted
//!   from the project's image (skipped with `--no-guest`).
//!
//! Medians of `--runs` (host) and `--guest-runs` (guest) repetitions. Not a test: it
//! measures, it does not judge.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio as ProcStdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::{require_artifacts, summary};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::agent_ttrpc::AgentClient;
use hull_protocol::rpc::{connect_within, ttrpc, Endpoint};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(about = "agent benchmark: container and exec latency against runc, host and guest")]
struct Args {
    /// Repetitions on the host (medians are reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Repetitions in the guest.
    #[arg(long, default_value_t = 3)]
    guest_runs: usize,
    /// Skip the in-guest half.
    #[arg(long)]
    no_guest: bool,
    #[arg(long, default_value = "target/release/hull-agent")]
    agent: PathBuf,
    #[arg(long, default_value = "target/release/hull-vmm")]
    vmm: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_KERNEL)]
    kernel: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_ROOT_IMAGE)]
    rootfs: PathBuf,
    /// Give up waiting for the guest after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(600).as_nanos() as i64)
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Ok(None) = self.0.try_wait() {
            if Instant::now() > deadline {
                let _ = self.0.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn busybox_rootfs(root: &Path) -> Result<()> {
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

/// The spec both runtimes get: runc's defaults (namespaces, mounts, masked paths,
/// capabilities) with `args`.
fn spec(root: &Path, args: &[&str], readonly: bool) -> serde_json::Value {
    let mut s = serde_json::to_value(oci_spec_default()).unwrap();
    s["root"] = json!({"path": root, "readonly": readonly});
    s["process"]["args"] = json!(args);
    s["process"]["terminal"] = json!(false);
    s["process"]["env"] = json!(["PATH=/bin"]);
    s["hostname"] = json!("bench");
    s
}

/// `runc spec`'s default config.json.
fn oci_spec_default() -> serde_json::Value {
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

fn create_start_wait(agent: &AgentClient, id: &str, spec: &serde_json::Value) -> Result<Duration> {
    let t = Instant::now();
    create_and_start(agent, id, spec)?;
    let mut w = ProcessRequest::new();
    w.container_id = id.into();
    let exit = agent.wait_process(ctx(), &w)?;
    if exit.exit_status != 0 {
        bail!("container {id} exited {}", exit.exit_status);
    }
    // `runc run` deletes the container too: time the same work.
    let mut c = ContainerRequest::new();
    c.container_id = id.into();
    agent.remove_container(ctx(), &c)?;
    Ok(t.elapsed())
}

fn exec_wait(agent: &AgentClient, id: &str, exec_id: &str) -> Result<Duration> {
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

fn create_and_start(agent: &AgentClient, id: &str, spec: &serde_json::Value) -> Result<()> {
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

/// Total syscalls in an `strace -c` summary.
fn strace_total(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    // "100.00    0.012345           3      4567       123 total": calls is the 4th column.
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Runs `f` with strace following every thread and child of `pid`; the syscall count.
fn count_syscalls(pid: u32, f: impl FnOnce() -> Result<()>) -> Result<Option<u64>> {
    if Command::new("strace").arg("-V").output().is_err() {
        return Ok(None);
    }
    let out = tempfile::NamedTempFile::new()?;
    let mut tracer = Command::new("strace");
    tracer.args(["-f", "-c", "-q", "-o"]).arg(out.path());
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for tid in &tids {
        tracer.arg("-p").arg(tid);
    }
    let mut tracer = tracer.stderr(ProcStdio::null()).spawn()?;
    std::thread::sleep(Duration::from_millis(500)); // attach
    let result = f();
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    tracer.wait()?;
    result?;
    Ok(strace_total(out.path()))
}

fn runc(root: &Path, args: &[&str]) -> Result<()> {
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .status()?;
    if !status.success() {
        bail!("runc {args:?}: {status}");
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

fn ms(v: &[Duration]) -> String {
    let secs: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    match summary(&secs) {
        Some((m, lo, hi)) if m >= 1000.0 => format!(
            "{:.2} s ({:.2}–{:.2})",
            m / 1000.0,
            lo / 1000.0,
            hi / 1000.0
        ),
        Some((m, lo, hi)) => format!("{m:.1} ms ({lo:.1}–{hi:.1})"),
        None => "–".into(),
    }
}

struct Row {
    what: &'static str,
    hull: Vec<Duration>,
    runc: Vec<Duration>,
    guest: Vec<Duration>,
    hull_calls: Option<u64>,
    runc_calls: Option<u64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-agent needs root (it creates containers)");
    }
    require_artifacts(&[("hull-agent", &args.agent)]).map_err(anyhow::Error::msg)?;
    let dir = tempfile::Builder::new()
        .prefix("hull-bench-agent")
        .tempdir()?;
    for d in ["sockets", "state", "area", "runc"] {
        std::fs::create_dir(dir.path().join(d))?;
    }
    let rootfs = dir.path().join("area/busybox");
    busybox_rootfs(&rootfs)?;
    let true_spec = spec(&rootfs, &["true"], true);
    let sleep_spec = spec(&rootfs, &["sleep", "100000"], true);

    // runc bundles of the same spec.
    let bundle = |name: &str, spec: &serde_json::Value| -> Result<PathBuf> {
        let b = dir.path().join(name);
        std::fs::create_dir(&b)?;
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(spec)?)?;
        Ok(b)
    };
    let true_bundle = bundle("bundle-true", &true_spec)?;
    let sleep_bundle = bundle("bundle-sleep", &sleep_spec)?;
    let runc_root = dir.path().join("runc");

    let agent_proc = Command::new(&args.agent)
        .arg("serve")
        .arg("--socket-dir")
        .arg(dir.path().join("sockets"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--rootfs-area")
        .arg(dir.path().join("area"))
        .arg("--cgroup-parent")
        .arg(format!("hull-bench-{}", std::process::id()))
        .stderr(ProcStdio::null())
        .spawn()
        .context("starting hull-agent serve")?;
    let agent_proc = KillOnDrop(agent_proc);
    let endpoint = Endpoint::UnixDir(dir.path().join("sockets"));
    let agent = connect_within(
        &endpoint,
        Duration::from_secs(20),
        Duration::from_millis(20),
    )
    .context("hull-agent serve never answered")?
    .client;
    agent.create_sandbox(ctx(), &CreateSandboxRequest::new())?;

    let mut run_row = Row {
        what: "container: create+start+wait+delete `true`",
        hull: vec![],
        runc: vec![],
        guest: vec![],
        hull_calls: None,
        runc_calls: None,
    };
    let mut exec_row = Row {
        what: "exec+wait `true` in a running container",
        hull: vec![],
        runc: vec![],
        guest: vec![],
        hull_calls: None,
        runc_calls: None,
    };
    eprintln!("host: {} runs each", args.runs);
    for i in 0..args.runs {
        run_row
            .hull
            .push(create_start_wait(&agent, &format!("c{i}"), &true_spec)?);
        run_row.runc.push(timed(|| {
            runc(
                &runc_root,
                &[
                    "run",
                    "--bundle",
                    true_bundle.to_str().unwrap(),
                    &format!("r{i}"),
                ],
            )
        })?);
    }
    create_and_start(&agent, "long", &sleep_spec)?;
    runc(
        &runc_root,
        &[
            "run",
            "-d",
            "--bundle",
            sleep_bundle.to_str().unwrap(),
            "long",
        ],
    )?;
    for i in 0..args.runs {
        exec_row
            .hull
            .push(exec_wait(&agent, "long", &format!("e{i}"))?);
        exec_row
            .runc
            .push(timed(|| runc(&runc_root, &["exec", "long", "true"]))?);
    }
    let agent_pid = agent_proc.0.id();
    run_row.hull_calls = count_syscalls(agent_pid, || {
        create_start_wait(&agent, "traced", &true_spec).map(|_| ())
    })?;
    exec_row.hull_calls = count_syscalls(agent_pid, || {
        exec_wait(&agent, "long", "traced").map(|_| ())
    })?;
    let strace_runc = |args: &[&str]| -> Result<Option<u64>> {
        let out = tempfile::NamedTempFile::new()?;
        let status = Command::new("strace")
            .args(["-f", "-c", "-q", "-o"])
            .arg(out.path())
            .arg("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(args)
            .stdin(ProcStdio::null())
            .stdout(ProcStdio::null())
            .status();
        Ok(status
            .ok()
            .filter(|s| s.success())
            .and_then(|_| strace_total(out.path())))
    };
    run_row.runc_calls =
        strace_runc(&["run", "--bundle", true_bundle.to_str().unwrap(), "traced"])?;
    exec_row.runc_calls = strace_runc(&["exec", "long", "true"])?;
    let _ = runc(&runc_root, &["delete", "-f", "long"]);
    drop(agent);
    drop(agent_proc);

    if !args.no_guest {
        guest(&args, &mut run_row, &mut exec_row)?;
    }

    println!();
    println!("| operation | hull-agent, host | runc, host | hull-agent in the guest (vsock) | syscalls: hull-agent | syscalls: runc |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in [&run_row, &exec_row] {
        let calls = |c: Option<u64>| c.map(|c| c.to_string()).unwrap_or_else(|| "–".into());
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.what,
            ms(&r.hull),
            ms(&r.runc),
            ms(&r.guest),
            calls(r.hull_calls),
            calls(r.runc_calls)
        );
    }
    println!();
    println!(
        "medians (min–max); host runs: {}, guest runs: {}",
        args.runs,
        if args.no_guest { 0 } else { args.guest_runs }
    );
    Ok(())
}

fn guest(args: &Args, run_row: &mut Row, exec_row: &mut Row) -> Result<()> {
    require_artifacts(&[
        ("hull-vmm", &args.vmm),
        ("guest kernel", &args.kernel),
        ("guest image", &args.rootfs),
    ])
    .map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let uds = dir.path().join("vm.vsock");
    let vm = Command::new(&args.vmm)
        .arg("--kernel")
        .arg(&args.kernel)
        .arg("--root")
        .arg(&args.rootfs)
        .arg("--vsock-uds")
        .arg(&uds)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null())
        .stderr(ProcStdio::null())
        .spawn()
        .context("starting hull-vmm")?;
    let _vm = KillOnDrop(vm);
    let endpoint = Endpoint::HybridVsock(uds);
    let started = Instant::now();
    let agent = connect_within(
        &endpoint,
        Duration::from_secs(args.timeout),
        Duration::from_millis(500),
    )
    .context("the guest agent never answered")?
    .client;
    eprintln!(
        "guest: agent answered after {:.1} s; {} runs each",
        started.elapsed().as_secs_f64(),
        args.guest_runs
    );
    agent.create_sandbox(ctx(), &CreateSandboxRequest::new())?;
    let root = Path::new("/usr/share/hull/rootfs/busybox");
    let true_spec = spec(root, &["true"], true);
    for i in 0..args.guest_runs {
        let d = create_start_wait(&agent, &format!("g{i}"), &true_spec)?;
        eprintln!("guest: container {i}: {:.1} s", d.as_secs_f64());
        run_row.guest.push(d);
    }
    create_and_start(&agent, "long", &spec(root, &["sleep", "100000"], true))?;
    for i in 0..args.guest_runs {
        let d = exec_wait(&agent, "long", &format!("e{i}"))?;
        eprintln!("guest: exec {i}: {:.1} s", d.as_secs_f64());
        exec_row.guest.push(d);
    }
    Ok(())
}
