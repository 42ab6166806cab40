//! bench-boot: boot the default hull guest N times and print a table of boot time and VMM
//! memory, side by side with QEMU (`-M microvm`) booting the same kernel and image.
//!
//! Not a test: it measures, it does not judge. Medians over repeated runs; the machine is
//! shared and noisy.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::{process_memory, summary, ProcessMemory};
use hull_protocol::boot::READY_MARKER;

#[derive(Debug, Parser)]
#[command(about = "Boot-time and memory benchmark: hull-vmm against QEMU microvm")]
struct Args {
    /// Boots per VMM.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[arg(long, default_value = "target/release/hull-vmm")]
    vmm: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_KERNEL)]
    kernel: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_ROOT_IMAGE)]
    rootfs: PathBuf,
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: String,
    /// Skip the QEMU peer.
    #[arg(long)]
    no_peer: bool,
    /// Give up on one boot after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// One boot's measurements.
#[derive(Debug, Default, Clone)]
struct Sample {
    /// Spawn of the VMM process to the ready marker on its console, ms.
    spawn_to_ready_ms: f64,
    /// The VMM's own boot-timer stages (ms since VMM start), when it reports them.
    stages: Vec<(String, f64)>,
    memory: ProcessMemory,
}

fn spawn_lines(child: &mut Child) -> mpsc::Receiver<(bool, String)> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((true, line));
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send((false, line));
            }
        });
    }
    rx
}

/// Runs `cmd` until its console prints the ready marker, samples its memory, stops it.
fn boot_once(mut cmd: Command, timeout: Duration) -> Result<Sample> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| {
        format!("start {program} (not installed? QEMU comes from apt-get install qemu-system-x86; --no-peer skips it)")
    })?;
    let rx = spawn_lines(&mut child);
    let mut sample = Sample::default();
    let mut last_err = String::new();
    let result = loop {
        let left = timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((true, line)) if line.contains(READY_MARKER) => {
                sample.spawn_to_ready_ms = start.elapsed().as_secs_f64() * 1e3;
                // Let the boot-timer log line for agent-ready arrive.
                std::thread::sleep(Duration::from_millis(200));
                sample.memory = process_memory(child.id()).unwrap_or_default();
                break Ok(());
            }
            Ok((false, line)) => {
                if let Some(s) = parse_stage(&line) {
                    sample.stages.push(s);
                }
                last_err = line;
            }
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(anyhow::anyhow!(
                    "no ready marker within {timeout:?} (last log line: {last_err})"
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(anyhow::anyhow!(
                    "exited before the ready marker (last log line: {last_err})"
                ))
            }
        }
    };
    while let Ok((false, line)) = rx.try_recv() {
        if let Some(s) = parse_stage(&line) {
            sample.stages.push(s);
        }
    }
    // SAFETY: kill(2) on our own, not yet reaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    result.map(|()| sample)
}

/// "boot timer: guest stage agent-ready at 1234.5 ms since VMM start"
fn parse_stage(line: &str) -> Option<(String, f64)> {
    let rest = line.split("guest stage ").nth(1)?;
    let (name, rest) = rest.split_once(" at ")?;
    let ms = rest.split_whitespace().next()?.parse().ok()?;
    Some((name.to_string(), ms))
}

fn hull_cmd(a: &Args) -> Command {
    let mut c = Command::new(&a.vmm);
    c.arg("--kernel")
        .arg(&a.kernel)
        .arg("--root")
        .arg(&a.rootfs)
        .arg("--cmdline-extra")
        .arg("hull.ready=wait")
        .env("RUST_LOG", "info");
    c
}

/// The command line hull-vmm gives the same guest, built by hull's own assembler; QEMU's
/// microvm announces its virtio-mmio devices itself.
fn guest_cmdline(host: &hull_vmm::quirks::HostMode) -> Result<String> {
    let cmdline = hull_vmm::cmdline::build(&hull_vmm::cmdline::CmdlineSpec {
        quirks: host
            .is_emulated()
            .then_some(hull_vmm::quirks::EMULATED_HOST_CMDLINE),
        devices: &[],
        root: Some(("vda".into(), Some("erofs".into()), true)),
        extra: "hull.ready=wait",
    })?;
    Ok(cmdline.as_cstring()?.into_string()?)
}

fn qemu_cmd(a: &Args, append: &str) -> Command {
    let mut c = Command::new(&a.qemu);
    c.args([
        "-M",
        "microvm,x-option-roms=off,rtc=off,memory-backend=mem",
        "-object",
        "memory-backend-memfd,id=mem,size=128M",
        "-enable-kvm",
        "-cpu",
        "host",
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ])
    .arg(&a.kernel)
    .arg("-append")
    .arg(append)
    .arg("-drive")
    .arg(format!(
        "id=root,file={},format=raw,if=none,readonly=on",
        a.rootfs.display()
    ))
    .args(["-device", "virtio-blk-device,drive=root"]);
    c
}

struct Series {
    name: &'static str,
    samples: Vec<Sample>,
    failure: Option<String>,
}

fn run_series(
    name: &'static str,
    runs: usize,
    make: impl Fn() -> Command,
    timeout: Duration,
) -> Series {
    let mut samples = Vec::new();
    for i in 0..runs {
        eprint!("{name}: boot {}/{runs} ... ", i + 1);
        match boot_once(make(), timeout) {
            Ok(s) => {
                eprintln!("{:.0} ms", s.spawn_to_ready_ms);
                samples.push(s);
            }
            Err(e) => {
                eprintln!("failed");
                return Series {
                    name,
                    samples,
                    failure: Some(format!("{e:#}")),
                };
            }
        }
    }
    Series {
        name,
        samples,
        failure: None,
    }
}

fn row(label: &str, unit: &str, v: &[f64]) {
    match summary(v) {
        Some((med, min, max)) => {
            println!("  {label:<40} {med:>10.1} {min:>10.1} {max:>10.1}  {unit}")
        }
        None => println!("  {label:<40} {:>10}", "n/a"),
    }
}

fn print_series(s: &Series) {
    println!("{} ({} boots)", s.name, s.samples.len());
    println!("  {:<40} {:>10} {:>10} {:>10}", "", "median", "min", "max");
    let f = |g: &dyn Fn(&Sample) -> f64| s.samples.iter().map(g).collect::<Vec<_>>();
    row(
        "process spawn -> ready marker",
        "ms",
        &f(&|x| x.spawn_to_ready_ms),
    );
    let mut stage_names: Vec<String> = Vec::new();
    for x in &s.samples {
        for (n, _) in &x.stages {
            if !stage_names.contains(n) {
                stage_names.push(n.clone());
            }
        }
    }
    for n in &stage_names {
        let v: Vec<f64> = s
            .samples
            .iter()
            .filter_map(|x| x.stages.iter().find(|(k, _)| k == n).map(|(_, ms)| *ms))
            .collect();
        row(&format!("VMM start -> guest stage {n}"), "ms", &v);
    }
    row(
        "RSS excluding guest RAM",
        "KiB",
        &f(&|x| x.memory.rss_excl_guest_kib as f64),
    );
    row(
        "PSS excluding guest RAM",
        "KiB",
        &f(&|x| x.memory.pss_excl_guest_kib as f64),
    );
    row(
        "guest RAM resident",
        "KiB",
        &f(&|x| x.memory.guest_kib as f64),
    );
    if let Some(e) = &s.failure {
        println!("  did not boot: {e}");
    }
}

fn main() -> Result<()> {
    let a = Args::parse();
    hull_e2e::require_artifacts(&[
        ("vmm", &a.vmm),
        ("kernel", &a.kernel),
        ("rootfs", &a.rootfs),
    ])
    .map_err(anyhow::Error::msg)?;
    let timeout = Duration::from_secs(a.timeout);
    let host = hull_vmm::quirks::resolve(Default::default());
    let hull = run_series("hull-vmm", a.runs, || hull_cmd(&a), timeout);
    let append = guest_cmdline(&host)?;
    let peer =
        (!a.no_peer).then(|| run_series("qemu microvm", a.runs, || qemu_cmd(&a, &append), timeout));

    println!();
    println!(
        "boot benchmark: kernel {}, image {}",
        a.kernel.display(),
        a.rootfs.display()
    );
    println!(
        "host KVM: {}",
        match &host {
            hull_vmm::quirks::HostMode::Hardware => "hardware-assisted".to_string(),
            hull_vmm::quirks::HostMode::Emulated { why } => format!("emulated ({why})"),
        }
    );
    print_series(&hull);
    if let Some(p) = &peer {
        print_series(p);
        let med = |s: &Series, g: &dyn Fn(&Sample) -> f64| {
            summary(&s.samples.iter().map(g).collect::<Vec<_>>()).map(|x| x.0)
        };
        if let (Some(h), Some(q)) = (
            med(&hull, &|x| x.spawn_to_ready_ms),
            med(p, &|x| x.spawn_to_ready_ms),
        ) {
            println!("ratio hull/qemu, spawn -> ready: {:.2}", h / q);
        }
        if let (Some(h), Some(q)) = (
            med(&hull, &|x| x.memory.rss_excl_guest_kib as f64),
            med(p, &|x| x.memory.rss_excl_guest_kib as f64),
        ) {
            println!("ratio hull/qemu, RSS excluding guest RAM: {:.2}", h / q);
        }
    }
    if hull.failure.is_some() {
        bail!("hull-vmm failed to boot");
    }
    Ok(())
}
