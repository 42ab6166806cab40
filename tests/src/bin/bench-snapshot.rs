//! bench-snapshot: a sandbox restored from a template against a cold boot, and what
//! restored sandboxes cost in memory.
//!
//! - latency: `--cold-runs` cold boots and `--runs` restores from the template (made first
//!   if the cache has none), each from spawning `hull-vmm` to the agent's first answer and
//!   to a usable sandbox (clock set, RNG reseeded); medians, and the ratio.
//! - cost split of a restore, from the VMM's log and the host library's timings: state
//!   file read and checked, guest memory mapped, VM built and vCPUs running, the vsock
//!   socket published, the agent's first answer (on the adopted connection), usable.
//! - the jail's cost: each restore is followed by one with the jail off (`jail.enabled =
//!   false`), and the two are compared: VM built, usable;
//! - memory: N sandboxes restored from one template and left idle, for each N in
//!   `--counts`; per sandbox, the PSS of the VMM process split into the VMM itself and
//!   guest RAM (the private pages the guest wrote, and its share of the template's file
//!   pages).
//!
//! Not a test: it measures, it does not judge. The figures go in docs/benchmarks.md.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use hull_e2e::{mapping_memory, process_memory, require_artifacts, summary};
use hull_host::template::DEFAULT_ROOT;
use hull_host::{Sandbox, TemplateCache, VmSpec};

#[derive(Debug, Parser)]
#[command(
    about = "snapshot benchmark: restore from a template against a cold boot, and memory per restored sandbox"
)]
struct Args {
    /// Restores to time (medians are reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Cold boots to time (each takes about a minute on an emulated-KVM host).
    #[arg(long, default_value_t = 2)]
    cold_runs: usize,
    /// Numbers of sandboxes restored at once for the memory table.
    #[arg(long, value_delimiter = ',', default_value = "1,10,50")]
    counts: Vec<usize>,
    /// The template cache.
    #[arg(long, default_value = DEFAULT_ROOT)]
    templates: PathBuf,
    #[arg(long, default_value = "target/release/hull-vmm")]
    vmm: PathBuf,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The milliseconds a VMM log line ending in "... in X ms" or "..., X ms after VMM start"
/// reports, for the first line containing `marker`.
fn logged_ms(log: &str, marker: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(marker))?;
    let before_ms = line.split(" ms").next()?;
    before_ms.rsplit([' ', ',']).next()?.parse().ok()
}

/// Microseconds since the VMM's start at which a log line containing `marker` was written,
/// from the log's timestamps and the first line's.
fn logged_at_ms(log: &str, marker: &str) -> Option<f64> {
    let stamp = |l: &str| -> Option<f64> {
        // [2026-11-29T12:39:00.889764Z ...]
        let t = l.get(1..28)?;
        let (_, time) = t.split_once('T')?;
        let mut parts = time.trim_end_matches('Z').split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some((h * 3600.0 + m * 60.0 + s) * 1e3)
    };
    let first = stamp(log.lines().next()?)?;
    let at = stamp(log.lines().find(|l| l.contains(marker))?)?;
    Some(at - first)
}

fn row(name: &str, v: &[f64]) -> String {
    match summary(v) {
        Some((med, lo, hi)) => format!("| {name} | {med:.1} ms ({lo:.1}–{hi:.1}) |"),
        None => format!("| {name} | n/a |"),
    }
}

fn run_dir(base: &Path, name: &str) -> Result<PathBuf> {
    let d = base.join(name);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The host library says which start path it took, and why a template was not used.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let spec = VmSpec::default();
    require_artifacts(&[
        ("kernel", spec.kernel.as_path()),
        ("image", spec.image.as_path()),
        ("hull-vmm", args.vmm.as_path()),
    ])
    .map_err(anyhow::Error::msg)?;
    std::env::set_var("HULL_VMM", std::fs::canonicalize(&args.vmm)?);
    let cache = TemplateCache::new(&args.templates);
    let base = tempfile::Builder::new()
        .prefix("hull-bench")
        .tempdir_in("/tmp")?;

    // The template (made now if missing: that is one more cold boot).
    let first = Sandbox::start(&spec, &run_dir(base.path(), "first")?, Some(&cache))
        .map_err(|e| anyhow::anyhow!(hull_vmm::error_chain(&e)))?;
    eprintln!("template: {}", first.path);
    first.kill();

    let mut cold_agent = Vec::new();
    let mut cold_ready = Vec::new();
    for i in 0..args.cold_runs {
        let s = Sandbox::cold_boot(&spec, &run_dir(base.path(), &format!("cold{i}"))?)
            .map_err(|e| anyhow::anyhow!(hull_vmm::error_chain(&e)))?;
        eprintln!(
            "cold boot {i}: agent {:.1} s",
            s.timings.agent_ready.as_secs_f64()
        );
        cold_agent.push(ms(s.timings.agent_ready));
        cold_ready.push(ms(s.timings.ready));
        s.kill();
    }

    let (mut state, mut map, mut built, mut socket, mut agent, mut ready) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut open_built, mut open_ready, mut jail_entry) = (vec![], vec![], vec![]);
    let unjailed = VmSpec {
        jail: None,
        ..spec.clone()
    };
    for i in 0..args.runs {
        let dir = run_dir(base.path(), &format!("restore{i}"))?;
        let s = Sandbox::start(&spec, &dir, Some(&cache))
            .map_err(|e| anyhow::anyhow!(hull_vmm::error_chain(&e)))?;
        let log = std::fs::read_to_string(&s.paths().log).unwrap_or_default();
        state.extend(logged_ms(&log, "state file read and checked"));
        map.extend(logged_ms(&log, "guest memory mapped"));
        built.extend(logged_ms(&log, "after VMM start"));
        socket.extend(logged_at_ms(&log, "vsock: accepting on"));
        if let (Some(before), Some(after)) = (
            logged_at_ms(&log, "kept for ADOPT"),
            logged_at_ms(&log, "jail: entered"),
        ) {
            jail_entry.push(after - before);
        }
        agent.push(ms(s.timings.agent_ready));
        ready.push(ms(s.timings.ready));
        s.kill();
        let dir = run_dir(base.path(), &format!("open{i}"))?;
        let s = Sandbox::start(&unjailed, &dir, Some(&cache))
            .map_err(|e| anyhow::anyhow!(hull_vmm::error_chain(&e)))?;
        let log = std::fs::read_to_string(&s.paths().log).unwrap_or_default();
        open_built.extend(logged_ms(&log, "after VMM start"));
        open_ready.push(ms(s.timings.ready));
        s.kill();
    }

    println!("\n### Restore from a template against a cold boot (1 vCPU, 128 MiB)\n");
    println!("| from `hull-vmm` spawn to | cold boot | restore | ratio |");
    println!("| --- | --- | --- | --- |");
    for (name, c, r) in [
        ("agent's first answer", &cold_agent, &agent),
        ("usable (clock set, RNG reseeded)", &cold_ready, &ready),
    ] {
        let (cm, rm) = (summary(c), summary(r));
        match (cm, rm) {
            (Some((c, clo, chi)), Some((r, rlo, rhi))) => println!(
                "| {name} | {:.1} s ({:.1}–{:.1}) | {:.0} ms ({:.0}–{:.0}) | {:.0}× |",
                c / 1e3,
                clo / 1e3,
                chi / 1e3,
                r,
                rlo,
                rhi,
                c / r
            ),
            _ => println!("| {name} | n/a | n/a | |"),
        }
    }
    println!(
        "\n### Where a restore's time goes (medians of {} runs, from the VMM's start)\n",
        args.runs
    );
    println!("| step | time |");
    println!("| --- | --- |");
    println!("{}", row("state file read and checked (duration)", &state));
    println!("{}", row("guest memory mapped (duration)", &map));
    println!("{}", row("VM, devices and vCPUs restored, running", &built));
    println!(
        "{}",
        row(
            "guest handled the vsock reset, accepting host clients",
            &socket
        )
    );
    println!("{}", row("agent's first answer (connect + Ping)", &agent));
    println!("{}", row("SetTime + ReseedRandom done: usable", &ready));

    println!(
        "\n### The jail's cost on a restore (medians of {} runs each, interleaved)\n",
        args.runs
    );
    println!("| from `hull-vmm` spawn to | jail on | jail off |");
    println!("| --- | --- | --- |");
    let pair = |name: &str, on: &[f64], off: &[f64]| match (summary(on), summary(off)) {
        (Some((a, alo, ahi)), Some((b, blo, bhi))) => {
            println!("| {name} | {a:.1} ms ({alo:.1}–{ahi:.1}) | {b:.1} ms ({blo:.1}–{bhi:.1}) |")
        }
        _ => println!("| {name} | n/a | n/a |"),
    };
    pair(
        "VM, devices and vCPUs restored, running",
        &built,
        &open_built,
    );
    pair("SetTime + ReseedRandom done: usable", &ready, &open_ready);
    println!(
        "{}",
        row("entering the jail (in the VMM, from its log)", &jail_entry)
    );

    println!("\n### Memory of idle sandboxes restored from one template (PSS per sandbox)\n");
    println!("| sandboxes | total | VMM (no guest RAM) | guest: pages it wrote (its own) | guest: share of template pages |");
    println!("| --- | --- | --- | --- | --- |");
    for &n in &args.counts {
        let mut sandboxes = Vec::new();
        for i in 0..n {
            let dir = run_dir(base.path(), &format!("m{n}-{i}"))?;
            let s = Sandbox::start(&spec, &dir, Some(&cache))
                .map_err(|e| anyhow::anyhow!(hull_vmm::error_chain(&e)))
                .with_context(|| format!("sandbox {i} of {n}"))?;
            sandboxes.push(s);
        }
        std::thread::sleep(Duration::from_secs(2));
        let (mut total, mut vmm, mut private, mut shared) = (0u64, 0u64, 0u64, 0u64);
        for s in &sandboxes {
            let pid = s.vmm_pid().context("VMM pid")?;
            let all = process_memory(pid)?;
            let guest = mapping_memory(pid, "/memory")?;
            total += all.pss_total_kib;
            vmm += all.pss_total_kib.saturating_sub(guest.pss_kib);
            private += guest.anon_kib;
            shared += guest.pss_kib.saturating_sub(guest.anon_kib);
        }
        let per = |v: u64| format!("{:.1} MiB", v as f64 / n as f64 / 1024.0);
        println!(
            "| {n} | {} | {} | {} | {} |",
            per(total),
            per(vmm),
            per(private),
            per(shared)
        );
        for s in sandboxes {
            s.kill();
        }
    }
    Ok(())
}
