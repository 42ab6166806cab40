//! bench-agent: how long the agent takes to run a trivial container and an exec, side by
//! side with `runc` on the same bundle, and how many syscalls each needs.
//!
//! - host: `hull-agent serve` on this machine (RPC over a unix socket) against `runc run`
//!   and `runc exec` of the same busybox bundle (Debian's runc). create+start+wait+delete
//!   of `true` (what `runc run` does), then exec+wait of `true` in a running container.
//! - work: one create+start+wait+delete (and one exec) traced with `strace -f` across the
//!   agent, its runtime helper and the container (system calls, processes and threads
//!   made), and the page faults of the agent and the children it reaped, counted from
//!   /proc in an untraced repetition (`hull_e2e::agent_work`); runc's system calls and
//!   processes the same way. In a guest whose kernel is emulated every call and fault costs
//!   real time, so these counts are what the guest latency follows.
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
use hull_e2e::agent_work::{
    count_trace, create_and_start, create_start_wait, ctx, exec_wait, measure, spec,
    strace_available, HostAgent, Work,
};
use hull_e2e::{require_artifacts, summary};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::{connect_within, Endpoint};

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

/// `runc --root ROOT ARGS` with no stdio, or `strace -f -q -o TRACE runc ...`.
fn runc_command(root: &Path, args: &[&str], trace: Option<&Path>) -> Command {
    let mut cmd = match trace {
        Some(out) => {
            let mut c = Command::new("strace");
            c.args(["-f", "-q", "-o"]).arg(out).arg("runc");
            c
        }
        None => Command::new("runc"),
    };
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .stdin(ProcStdio::null())
        .stdout(ProcStdio::null());
    cmd
}

fn runc(root: &Path, args: &[&str]) -> Result<()> {
    let status = runc_command(root, args, None).status()?;
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
    hull_work: Option<Work>,
    runc_work: Option<Work>,
}

impl Row {
    fn new(what: &'static str) -> Row {
        Row {
            what,
            hull: vec![],
            runc: vec![],
            guest: vec![],
            hull_work: None,
            runc_work: None,
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("bench-agent needs root (it creates containers)");
    }
    require_artifacts(&[("hull-agent", &args.agent)]).map_err(anyhow::Error::msg)?;
    let host = HostAgent::start(&args.agent)?;
    let agent = host.client();
    let true_spec = host.spec(&["true"]);
    let sleep_spec = host.spec(&["sleep", "100000"]);

    // runc bundles of the same spec.
    let dir = tempfile::Builder::new()
        .prefix("hull-bench-agent")
        .tempdir()?;
    let bundle = |name: &str, spec: &serde_json::Value| -> Result<PathBuf> {
        let b = dir.path().join(name);
        std::fs::create_dir(&b)?;
        std::fs::write(b.join("config.json"), serde_json::to_vec_pretty(spec)?)?;
        Ok(b)
    };
    let true_bundle = bundle("bundle-true", &true_spec)?;
    let sleep_bundle = bundle("bundle-sleep", &sleep_spec)?;
    let runc_root = dir.path().join("runc");
    std::fs::create_dir(&runc_root)?;

    let mut run_row = Row::new("container: create+start+wait+delete `true`");
    let mut exec_row = Row::new("exec+wait `true` in a running container");
    eprintln!("host: {} runs each", args.runs);
    for i in 0..args.runs {
        run_row
            .hull
            .push(create_start_wait(agent, &format!("c{i}"), &true_spec)?);
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
    create_and_start(agent, "long", &sleep_spec)?;
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
            .push(exec_wait(agent, "long", &format!("e{i}"))?);
        exec_row
            .runc
            .push(timed(|| runc(&runc_root, &["exec", "long", "true"]))?);
    }
    if strace_available() {
        run_row.hull_work = Some(measure(host.pid(), |n| {
            create_start_wait(agent, &format!("counted{n}"), &true_spec).map(drop)
        })?);
        exec_row.hull_work = Some(measure(host.pid(), |n| {
            exec_wait(agent, "long", &format!("counted{n}")).map(drop)
        })?);
        let run_args = ["run", "--bundle", true_bundle.to_str().unwrap(), "counted"];
        run_row.runc_work = runc_work(&runc_root, &run_args)?;
        exec_row.runc_work = runc_work(&runc_root, &["exec", "long", "true"])?;
    } else {
        eprintln!("strace is not installed: no counts (apt-get install strace)");
    }
    let _ = runc(&runc_root, &["delete", "-f", "long"]);
    drop(host);

    if !args.no_guest {
        guest(&args, &mut run_row, &mut exec_row)?;
    }

    println!();
    println!("| operation | hull-agent, host | runc, host | hull-agent in the guest (vsock) |");
    println!("| --- | --- | --- | --- |");
    for r in [&run_row, &exec_row] {
        println!(
            "| {} | {} | {} | {} |",
            r.what,
            ms(&r.hull),
            ms(&r.runc),
            ms(&r.guest)
        );
    }
    println!();
    println!("| work of one | system calls | processes made | threads made | page faults (minor/major) |");
    println!("| --- | --- | --- | --- | --- |");
    for r in [&run_row, &exec_row] {
        for (who, w) in [("hull-agent", &r.hull_work), ("runc", &r.runc_work)] {
            let Some(w) = w else { continue };
            let faults = if who == "runc" {
                "–".to_string()
            } else {
                format!("{}/{}", w.minor_faults, w.major_faults)
            };
            println!(
                "| {}, {who} | {} | {} | {} | {faults} |",
                r.what, w.syscalls, w.processes, w.threads
            );
        }
    }
    println!();
    println!(
        "medians (min–max); host runs: {}, guest runs: {}",
        args.runs,
        if args.no_guest { 0 } else { args.guest_runs }
    );
    Ok(())
}

/// `runc ARGS` under `strace -f`: its system calls, processes and threads.
fn runc_work(root: &Path, args: &[&str]) -> Result<Option<Work>> {
    let out = tempfile::NamedTempFile::new()?;
    let status = runc_command(root, args, Some(out.path())).status()?;
    if !status.success() {
        return Ok(None);
    }
    Ok(Some(count_trace(&std::fs::read_to_string(out.path())?)))
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
