//! `hull run --rm busybox true` through the CLI, on the template path and on the cold path
//! (templates = false: every run boots), side by side with `ctr run --rm ... true` through
//! Debian's runc shim and through containerd-shim-hull-v2 on the same busybox, in one
//! private containerd. Wall time, medians of repeated runs; and the CLI's peak memory: the
//! largest resident set among `hull` and the processes it waited for (its VMM, whose
//! resident set counts the guest pages it touched).
//!
//! Run as root: `cargo build --release -p hull-vmm -p hull-shim -p hull-cli && cargo run
//! --release -p hull-e2e --bin bench-cli -- --runs 5`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::containerd::{unavailable, Containerd, BUSYBOX, RUNTIME};
use hull_e2e::summary;

#[derive(Parser)]
struct Args {
    /// Timed runs per way.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Cold-path runs (each boots a VM).
    #[arg(long, default_value_t = 3)]
    cold_runs: usize,
}

fn hull_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let hull = exe.parent().context("no directory")?.join("hull");
    if !hull.exists() {
        bail!(
            "{} is missing: cargo build --release -p hull-cli",
            hull.display()
        );
    }
    Ok(hull)
}

/// One `hull run --rm busybox true`: seconds and the peak resident set in KiB.
fn hull_run(
    hull: &PathBuf,
    root: &std::path::Path,
    config: Option<&PathBuf>,
) -> Result<(f64, u64)> {
    let t = Instant::now();
    let mut cmd = Command::new(hull);
    cmd.args(["run", "--rm", "busybox", "true"])
        .env("HULL_ROOT", root);
    if let Some(c) = config {
        cmd.env("HULL_CONFIG", c);
    }
    let child = cmd.spawn()?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child; `status` and `usage` outlive the call.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let secs = t.elapsed().as_secs_f64();
    if pid < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("hull run failed (status {status:#x})");
    }
    Ok((secs, usage.ru_maxrss as u64))
}

fn ctr_run(c: &Containerd, runtime: &str, id: &str) -> Result<f64> {
    let t = Instant::now();
    let out = c.ctr(&["run", "--rm", "--runtime", runtime, BUSYBOX, id, "true"]);
    if !out.status.success() {
        bail!("ctr run {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(why) = unavailable() {
        bail!("cannot run: {why}");
    }
    let hull = hull_binary()?;
    let root = tempfile::tempdir()?;
    let cold_config = root.path().join("cold.toml");
    std::fs::write(&cold_config, "templates = false\n")?;
    let open_config = root.path().join("open.toml");
    std::fs::write(&open_config, "[jail]\nenabled = false\n")?;
    let c = Containerd::start("");
    // Warm-up: the template, the built-in image's erofs copy, containerd's snapshots.
    hull_run(&hull, root.path(), None)?;
    ctr_run(&c, RUNTIME, "warm-hull")?;
    ctr_run(&c, "io.containerd.runc.v2", "warm-runc")?;

    let (mut warm, mut warm_rss, mut cold, mut cold_rss) = (vec![], vec![], vec![], vec![]);
    let (mut shim, mut runc) = (vec![], vec![]);
    let (mut open, mut open_rss) = (vec![], vec![]);
    for i in 0..args.runs {
        let (s, rss) = hull_run(&hull, root.path(), None)?;
        warm.push(s);
        warm_rss.push(rss as f64);
        let (s, rss) = hull_run(&hull, root.path(), Some(&open_config))?;
        open.push(s);
        open_rss.push(rss as f64);
        shim.push(ctr_run(&c, RUNTIME, &format!("hull-{i}"))?);
        runc.push(ctr_run(&c, "io.containerd.runc.v2", &format!("runc-{i}"))?);
    }
    for _ in 0..args.cold_runs {
        let (s, rss) = hull_run(&hull, root.path(), Some(&cold_config))?;
        cold.push(s);
        cold_rss.push(rss as f64);
    }
    let ms = |v: &[f64]| {
        summary(v)
            .map(|(m, lo, hi)| format!("{:.0} ms ({:.0}–{:.0})", m * 1e3, lo * 1e3, hi * 1e3))
            .unwrap_or_default()
    };
    let mib = |v: &[f64]| {
        summary(v)
            .map(|(m, _, _)| format!("{:.1} MiB", m / 1024.0))
            .unwrap_or_default()
    };
    println!(
        "### `true` in busybox, start to exit ({} runs each, {} cold; median (min–max))\n",
        args.runs, args.cold_runs
    );
    println!("| way | wall time | peak memory (largest process) |");
    println!("| --- | --- | --- |");
    println!(
        "| `hull run --rm` (template) | {} | {} |",
        ms(&warm),
        mib(&warm_rss)
    );
    println!(
        "| `hull run --rm` (template, jail off: jail.enabled = false) | {} | {} |",
        ms(&open),
        mib(&open_rss)
    );
    println!(
        "| `hull run --rm` (cold boot, templates = false) | {} | {} |",
        ms(&cold),
        mib(&cold_rss)
    );
    println!(
        "| `ctr run --rm` through containerd-shim-hull-v2 | {} | (in containerd's processes) |",
        ms(&shim)
    );
    println!(
        "| `ctr run --rm` through runc | {} | (in containerd's processes) |",
        ms(&runc)
    );
    Ok(())
}
