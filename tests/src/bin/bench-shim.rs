//! `ctr run` through containerd-shim-hull-v2 against Debian's runc shim
//! (`io.containerd.runc.v2`) on the same busybox image, in one private containerd: time to
//! the container's first output (process start) and to `ctr` returning (exit and delete),
//! medians of repeated runs; where a hull run's time goes; and the memory an idle task
//! costs the host (PSS of VMM without guest RAM, shim, and for runc the container's
//! processes), with the guest's own footprint apart; and reading and writing a volume's
//! small files through each way hull brings volumes in (a read-only copy on a block
//! device, a read-write share over virtio-fs) against runc's bind mount.
//!
//! Run as root: `cargo build --release -p hull-vmm -p hull-shim && cargo run --release -p
//! hull-e2e --bin bench-shim -- --runs 5 --idle 5`.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::containerd::{unavailable, Containerd, BUSYBOX, RUNTIME};
use hull_e2e::{
    cpu_ticks, descendants, mapping_memory, mib, pids_of, process_memory, pss, summary,
};

const RUNC: &str = "io.containerd.runc.v2";

#[derive(Parser)]
struct Args {
    /// Timed runs per runtime.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Idle tasks per runtime for the memory table.
    #[arg(long, default_value_t = 5)]
    idle: usize,
    /// Files of 4 KiB in the volume for the file table (0 skips it).
    #[arg(long, default_value_t = 100)]
    files: usize,
}

/// In the container: time `cat` of every file in /data, and (read-write volumes) writing
/// as many new files, from /proc/uptime (10 ms resolution; the guest's own clock).
const VOLUME_READ: &str =
    "read a _ < /proc/uptime; cat /data/f* > /dev/null; read b _ < /proc/uptime; \
    awk \"BEGIN { print ($b - $a) * 1000 }\"";
const VOLUME_WRITE: &str =
    "read a _ < /proc/uptime; cat /data/f* > /dev/null; read b _ < /proc/uptime; \
    for i in $(ls /data); do echo written > /data/w$i; done; read c _ < /proc/uptime; \
    awk \"BEGIN { print ($b - $a) * 1000, ($c - $b) * 1000 }\"";

/// One container over the volume `dir`: milliseconds to read its files and, read-write, to
/// write as many.
fn volume_run(
    c: &Containerd,
    runtime: &str,
    id: &str,
    dir: &std::path::Path,
    read_only: bool,
) -> Result<(f64, Option<f64>)> {
    let mode = if read_only { "ro" } else { "rw" };
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:{mode}",
        dir.display()
    );
    let script = if read_only { VOLUME_READ } else { VOLUME_WRITE };
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        runtime,
        "--mount",
        &mount,
        BUSYBOX,
        id,
        "sh",
        "-c",
        script,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{runtime} volume run {id} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    // What the run wrote goes, so every run writes into the same directory.
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_name().to_string_lossy().starts_with('w') {
            std::fs::remove_file(e.path())?;
        }
    }
    match v[..] {
        [r] => Ok((r, None)),
        [r, w] => Ok((r, Some(w))),
        _ => bail!("{runtime} volume run {id} printed {text:?}"),
    }
}

struct Timing {
    first_output: Duration,
    done: Duration,
}

/// One `ctr run --rm` of `echo`: when its output arrived and when ctr returned.
fn timed_run(c: &Containerd, runtime: &str, id: &str) -> Result<Timing> {
    let t = Instant::now();
    let mut child = c
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            BUSYBOX,
            id,
            "echo",
            "started",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 1];
    let n = out.read(&mut first)?;
    let first_output = t.elapsed();
    let mut rest = Vec::new();
    out.read_to_end(&mut rest)?;
    let status = child.wait()?;
    let done = t.elapsed();
    if n == 0 || !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("{runtime} run {id} failed ({status}): {err}");
    }
    Ok(Timing { first_output, done })
}

/// Seconds since midnight of a containerd log line's `time="...T12:34:56.789Z"`.
fn log_time(line: &str) -> Option<f64> {
    let t = line.split("time=\"").nth(1)?.split('"').next()?;
    let clock = t.split('T').nth(1)?.trim_end_matches('Z');
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Where one hull run's time went, from the shim's log lines.
fn breakdown(log: &str, id: &str) -> Vec<(String, f64)> {
    let find = |needle: &str| {
        log.lines()
            .filter(|l| l.contains(needle))
            .filter_map(log_time)
            .next()
    };
    let image = find(&format!("/{id}.erofs ("));
    let restored = find(&format!("sandbox {id}: "));
    let mounted = find(&format!("container {id}: root disk in slot"));
    let create = find(&format!("event Create {{ id: \"{id}\""));
    let start = find(&format!("event Start {{ id: \"{id}\""));
    let exit = find(&format!("event Exit {{ id: \"{id}\""));
    let delete = find(&format!("event Delete {{ id: \"{id}\""));
    let mut out = Vec::new();
    let mut step = |what: &str, from: Option<f64>, to: Option<f64>| {
        if let (Some(a), Some(b)) = (from, to) {
            out.push((what.to_string(), (b - a) * 1e3));
        }
    };
    step(
        "rootfs image built → VM restored and usable",
        image,
        restored,
    );
    step(
        "VM usable → root disk attached, found and mounted in the guest (erofs + overlay)",
        restored,
        mounted,
    );
    step(
        "mounted → container created (CreateSandbox, CreateContainer)",
        mounted,
        create,
    );
    step("created → started", create, start);
    step("started → exited (echo ran, output drained)", start, exit);
    step(
        "exited → deleted (remove, unmount, detach, VM stopped)",
        exit,
        delete,
    );
    out
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(why) = unavailable() {
        bail!("cannot run: {why}");
    }
    let c = Containerd::start("");
    let mark = c.dir.path().to_string_lossy().into_owned();
    // Warm-up: the first hull run may have to make the template.
    timed_run(&c, RUNTIME, "warm-hull")?;
    timed_run(&c, RUNC, "warm-runc")?;

    let mut results: Vec<(&str, Vec<Timing>)> = vec![(RUNTIME, Vec::new()), (RUNC, Vec::new())];
    for i in 0..args.runs {
        for (runtime, v) in results.iter_mut() {
            let tag = if *runtime == RUNTIME { "hull" } else { "runc" };
            v.push(timed_run(&c, runtime, &format!("{tag}-{i}"))?);
        }
    }
    println!(
        "### `ctr run --rm {BUSYBOX} echo` ({} runs each, median (min–max))\n",
        args.runs
    );
    println!(
        "| runtime | to the container's first output | to `ctr` returning (exited, deleted) |"
    );
    println!("| --- | --- | --- |");
    let cell = |v: Vec<f64>| {
        summary(&v)
            .map(|(m, lo, hi)| format!("{:.0} ms ({:.0}–{:.0})", m * 1e3, lo * 1e3, hi * 1e3))
            .unwrap_or_default()
    };
    let mut medians = Vec::new();
    for (runtime, v) in &results {
        let first: Vec<f64> = v.iter().map(|t| t.first_output.as_secs_f64()).collect();
        let done: Vec<f64> = v.iter().map(|t| t.done.as_secs_f64()).collect();
        medians.push((
            summary(&first).map(|s| s.0).unwrap_or(0.0),
            summary(&done).map(|s| s.0).unwrap_or(0.0),
        ));
        println!("| {runtime} | {} | {} |", cell(first), cell(done));
    }
    if let [(hf, hd), (rf, rd)] = medians[..] {
        println!(
            "| ratio hull / runc | {:.1}× | {:.1}× |",
            hf / rf.max(1e-9),
            hd / rd.max(1e-9)
        );
    }

    let log = c.log();
    let id = format!("hull-{}", args.runs / 2);
    println!("\n### Where a hull run's time goes (`{id}`, from the shim's log)\n");
    println!("| step | ms |");
    println!("| --- | --- |");
    for (what, ms) in breakdown(&log, &id) {
        println!("| {what} | {ms:.0} |");
    }

    // A volume's small files, each way in.
    let vol = c.dir.path().join("bench-volume");
    std::fs::create_dir_all(&vol)?;
    for i in 0..args.files {
        std::fs::write(vol.join(format!("f{i:04}")), vec![b'x'; 4096])?;
    }
    let ways: [(&str, &str, bool); 3] = [
        (
            "hull, read-only (erofs copy on a drive slot)",
            RUNTIME,
            true,
        ),
        ("hull, read-write (virtio-fs share)", RUNTIME, false),
        ("runc, read-write (bind mount)", RUNC, false),
    ];
    println!(
        "\n### A volume's {} files of 4 KiB, in the container ({} runs each, median (min–max), first touch)\n",
        args.files, args.runs
    );
    println!("| volume | `cat` them all | write as many new files |");
    println!("| --- | --- | --- |");
    for (w, (what, runtime, ro)) in ways.iter().enumerate().filter(|_| args.files > 0) {
        let (mut reads, mut writes) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            let (r, wr) = volume_run(&c, runtime, &format!("vol{w}-{i}"), &vol, *ro)?;
            reads.push(r / 1e3);
            writes.extend(wr.map(|x| x / 1e3));
        }
        let write_cell = if writes.is_empty() {
            "(read-only)".to_string()
        } else {
            cell(writes)
        };
        println!("| {what} | {} | {write_cell} |", cell(reads));
    }

    // Idle tasks.
    for i in 0..args.idle {
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            BUSYBOX,
            &format!("idle-hull-{i}"),
            "sleep",
            "100000",
        ]);
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            RUNC,
            BUSYBOX,
            &format!("idle-runc-{i}"),
            "sleep",
            "100000",
        ]);
    }
    for i in 0..args.idle {
        c.wait_status(
            &format!("idle-hull-{i}"),
            "RUNNING",
            Duration::from_secs(120),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    let vmms = pids_of("hull-vmm", &mark);
    let hull_shims = pids_of("containerd-shim-hull-v2", &mark);
    let runc_shims = pids_of("containerd-shim-runc-v2", &mark);
    let (mut vmm_kib, mut guest_kib, mut guest_own_kib) = (0u64, 0u64, 0u64);
    for &p in &vmms {
        let all = process_memory(p)?;
        let guest = mapping_memory(p, "/memory")?;
        vmm_kib += all.pss_total_kib.saturating_sub(guest.pss_kib);
        guest_kib += guest.pss_kib;
        guest_own_kib += guest.anon_kib;
    }
    let cpu_before = cpu_ticks(&vmms) + cpu_ticks(&hull_shims);
    let runc_before = cpu_ticks(&runc_shims) + cpu_ticks(&descendants(&runc_shims));
    let window = Duration::from_secs(10);
    std::thread::sleep(window);
    let ticks = |t: u64| {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        format!(
            "{:.2} %",
            t as f64 / hz / window.as_secs_f64() / args.idle as f64 * 100.0
        )
    };
    let hull_cpu = ticks((cpu_ticks(&vmms) + cpu_ticks(&hull_shims)).saturating_sub(cpu_before));
    let runc_cpu = ticks(
        (cpu_ticks(&runc_shims) + cpu_ticks(&descendants(&runc_shims))).saturating_sub(runc_before),
    );
    let hull_shim_kib = pss(&hull_shims);
    let runc_shim_kib = pss(&runc_shims);
    let runc_tasks_kib = pss(&descendants(&runc_shims));
    let n = args.idle;
    println!("\n### Memory per idle task ({n} `sleep` tasks each, PSS)\n");
    println!("| runtime | host processes in all | VMM without guest RAM | shim | container processes | guest RAM (its own pages) | CPU while idle |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| hull ({} VMMs, {} shims) | {} | {} | {} | (in the guest) | {} ({}) | {hull_cpu} |",
        vmms.len(),
        hull_shims.len(),
        mib(vmm_kib + hull_shim_kib, n),
        mib(vmm_kib, n),
        mib(hull_shim_kib, n),
        mib(guest_kib, n),
        mib(guest_own_kib, n)
    );
    println!(
        "| runc ({} shims) | {} | — | {} | {} | — | {runc_cpu} |",
        runc_shims.len(),
        mib(runc_shim_kib + runc_tasks_kib, n),
        mib(runc_shim_kib, n),
        mib(runc_tasks_kib, n)
    );
    for i in 0..n {
        for tag in ["hull", "runc"] {
            let id = format!("idle-{tag}-{i}");
            let _ = c.ctr(&["task", "kill", "--signal", "SIGKILL", &id]);
        }
    }
    for i in 0..n {
        for tag in ["hull", "runc"] {
            let id = format!("idle-{tag}-{i}");
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.task_status(&id).as_deref() != Some("STOPPED") && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.ctr(&["task", "delete", &id]);
            let _ = c.ctr(&["container", "rm", &id]);
        }
    }
    Ok(())
}
