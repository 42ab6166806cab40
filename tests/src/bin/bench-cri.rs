//! Kubernetes pods through containerd's CRI plugin, hull's runtime handler against runc
//! (containerd's default) on the same CNI bridge, driven as kubelet drives them
//! (`hull_e2e::cri`): the time from RunPodSandbox to a container's first output and to the
//! pod being gone, medians of repeated runs; the host memory an idle pod costs at several
//! pod counts; and TCP between two pods of one runtime (round-trip time and throughput).
//!
//! Run as root: `cargo build -p hull-vmm -p hull-shim && cargo run --release -p hull-e2e
//! --bin bench-cri -- --runs 5 --idle 1,10`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::containerd::{unavailable, Containerd, BUSYBOX};
use hull_e2e::cri::{Cri, Pod, PodSandboxConfig};
use hull_e2e::{mapping_memory, mib, pids_of, process_memory, pss, summary};

#[derive(Parser)]
struct Args {
    /// Timed pods per runtime.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Idle pod counts for the memory table, comma-separated.
    #[arg(long, default_value = "1,10", value_delimiter = ',')]
    idle: Vec<usize>,
    /// Megabytes sent pod to pod for the throughput column (0 skips the network table).
    #[arg(long, default_value_t = 64)]
    megabytes: usize,
}

/// The two runtime handlers: hull's, and the CRI's default (runc).
const RUNTIMES: [(&str, &str); 2] = [("hull", "hull"), ("runc", "")];

/// Seconds from `t0` to each step of one pod's life.
struct Timing {
    pod_ready: f64,
    running: f64,
    first_output: f64,
    teardown: f64,
}

/// A pod whose container runs `command`; returns (pod id, container id, its config).
fn start_pod(
    cri: &Cri,
    dir: &std::path::Path,
    name: &str,
    handler: &str,
    command: &[&str],
) -> Result<(String, String, Pod, PodSandboxConfig)> {
    let pod = Pod::new(name, dir);
    let config = pod.config();
    let id = cri
        .run_pod(&config, handler)
        .with_context(|| format!("RunPodSandbox {name}"))?;
    let c = pod.container("main", BUSYBOX, command);
    let cid = cri
        .create_container(&id, &c, &config)
        .with_context(|| format!("CreateContainer in {name}"))?;
    cri.start_container(&cid)
        .with_context(|| format!("StartContainer in {name}"))?;
    Ok((id, cid, pod, config))
}

fn remove_pod(cri: &Cri, id: &str) -> Result<()> {
    cri.stop_pod(id).context("StopPodSandbox")?;
    cri.remove_pod(id).context("RemovePodSandbox")?;
    Ok(())
}

fn timed_pod(cri: &Cri, dir: &std::path::Path, name: &str, handler: &str) -> Result<Timing> {
    let t0 = Instant::now();
    let pod = Pod::new(name, dir);
    let config = pod.config();
    let id = cri.run_pod(&config, handler)?;
    let pod_ready = t0.elapsed().as_secs_f64();
    let c = pod.container("main", BUSYBOX, &["sh", "-c", "echo ready; sleep 100000"]);
    let cid = cri.create_container(&id, &c, &config)?;
    cri.start_container(&cid)?;
    let running = t0.elapsed().as_secs_f64();
    pod.wait_log("main", "ready", Duration::from_secs(300));
    let first_output = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    remove_pod(cri, &id)?;
    Ok(Timing {
        pod_ready,
        running,
        first_output,
        teardown: t1.elapsed().as_secs_f64(),
    })
}

fn cell(v: &[f64]) -> String {
    summary(v)
        .map(|(m, lo, hi)| format!("{:.0} ms ({:.0}–{:.0})", m * 1e3, lo * 1e3, hi * 1e3))
        .unwrap_or_default()
}

/// The host memory of `count` idle pods of each runtime, per pod.
fn idle_memory(c: &Containerd, cri: &Cri, count: usize) -> Result<()> {
    let mark = c.dir.path().to_string_lossy().into_owned();
    let mut pods = Vec::new();
    for (tag, handler) in RUNTIMES {
        for i in 0..count {
            let name = format!("idle-{tag}-{count}-{i}");
            let (id, _, _, _) = start_pod(cri, c.dir.path(), &name, handler, &["sleep", "100000"])?;
            pods.push(id);
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let vmms = pids_of("hull-vmm", &mark);
    let (mut vmm_kib, mut guest_kib) = (0u64, 0u64);
    for &p in &vmms {
        let all = process_memory(p)?;
        let guest = mapping_memory(p, "/memory")?;
        vmm_kib += all.pss_total_kib.saturating_sub(guest.pss_kib);
        guest_kib += guest.pss_kib;
    }
    let hull_shim_kib = pss(&pids_of("containerd-shim-hull-v2", &mark));
    // runc's pods are their shims' children (pause and the container).
    let runc_shims = pids_of("containerd-shim-runc-v2", &mark);
    let runc_kib = pss(&runc_shims) + pss(&hull_e2e::descendants(&runc_shims));
    println!(
        "| {count} | {} | {} | {} | {} | {} |",
        mib(vmm_kib + hull_shim_kib + guest_kib, count),
        mib(vmm_kib, count),
        mib(hull_shim_kib, count),
        mib(guest_kib, count),
        mib(runc_kib, count),
    );
    for id in pods {
        remove_pod(cri, &id)?;
    }
    Ok(())
}

/// Round-trip time (ms, busybox ping's average) and throughput (busybox dd through nc,
/// timed by the client's /proc/uptime) from one pod of `handler` to another.
fn pod_to_pod(
    c: &Containerd,
    cri: &Cri,
    tag: &str,
    handler: &str,
    mb: usize,
) -> Result<(f64, String)> {
    let server_cmd = ["sh", "-c", "while :; do nc -l -p 5001 > /dev/null; done"];
    let (server, _, _, _) = start_pod(
        cri,
        c.dir.path(),
        &format!("tcp-server-{tag}"),
        handler,
        &server_cmd,
    )?;
    let (client, client_c, _, _) = start_pod(
        cri,
        c.dir.path(),
        &format!("tcp-client-{tag}"),
        handler,
        &["sleep", "100000"],
    )?;
    let ip = cri
        .pod_status(&server)?
        .network
        .map(|n| n.ip)
        .unwrap_or_default();
    let exec = |cmd: &str| -> Result<String> {
        let r = cri.exec_sync(&client_c, &["sh", "-c", cmd], 600)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        if r.exit_code != 0 {
            bail!("{cmd}: exit {}: {text}", r.exit_code);
        }
        Ok(text)
    };
    // Warm the path (ARP, the server's first accept), then measure.
    exec(&format!("ping -c 2 {ip} > /dev/null"))?;
    let ping = exec(&format!("ping -c 10 -i 0.2 {ip}"))?;
    // "round-trip min/avg/max = 0.061/0.077/0.104 ms"
    let rtt = ping
        .lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("ping said {ping:?}"))?;
    let out = exec(&format!(
        "start=$(cat /proc/uptime); dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {ip} 5001; \
         echo $start $(cat /proc/uptime)",
        mb * 16
    ))?;
    let times: Vec<f64> = out
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let secs = match times[..] {
        [a, _, b, _] => b - a,
        _ => bail!("timing said {out:?}"),
    };
    remove_pod(cri, &client)?;
    remove_pod(cri, &server)?;
    // /proc/uptime counts in 10 ms: a faster transfer shows as a lower bound.
    let rate = mb as f64 / secs.max(0.01);
    let rate = if secs < 0.01 {
        format!("≥ {rate:.0} MB/s")
    } else {
        format!("{rate:.0} MB/s")
    };
    Ok((rtt, rate))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(why) = unavailable() {
        bail!("cannot run: {why}");
    }
    let c = Containerd::start_cri("");
    let cri = Cri::connect(&c.socket);
    // Warm-up: the first hull pod may have to make the networked template.
    for (tag, handler) in RUNTIMES {
        timed_pod(&cri, c.dir.path(), &format!("warm-{tag}"), handler)?;
    }
    let mut results: Vec<(&str, Vec<Timing>)> =
        RUNTIMES.iter().map(|(t, _)| (*t, Vec::new())).collect();
    for i in 0..args.runs {
        for ((tag, handler), (_, v)) in RUNTIMES.iter().zip(results.iter_mut()) {
            v.push(timed_pod(
                &cri,
                c.dir.path(),
                &format!("{tag}-{i}"),
                handler,
            )?);
        }
    }
    println!(
        "### A pod through the CRI: RunPodSandbox, one busybox container, its first output, teardown ({} runs each, median (min–max))\n",
        args.runs
    );
    println!("| runtime | RunPodSandbox returns | container running | first output | StopPodSandbox + RemovePodSandbox |");
    println!("| --- | --- | --- | --- | --- |");
    for (tag, v) in &results {
        let col = |f: fn(&Timing) -> f64| cell(&v.iter().map(f).collect::<Vec<_>>());
        println!(
            "| {tag} | {} | {} | {} | {} |",
            col(|t| t.pod_ready),
            col(|t| t.running),
            col(|t| t.first_output),
            col(|t| t.teardown)
        );
    }

    println!("\n### Host memory per idle pod (one `sleep` container each, PSS)\n");
    println!("| pods of each | hull in all | hull VMM without guest RAM | hull shim | hull guest RAM | runc (shim, pause, container) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for &n in &args.idle {
        idle_memory(&c, &cri, n)?;
    }

    if args.megabytes > 0 {
        println!(
            "\n### Pod to pod on the bridge (busybox ping, {} MB through nc)\n",
            args.megabytes
        );
        println!("| runtime | round trip (avg of 10) | throughput |");
        println!("| --- | --- | --- |");
        for (tag, handler) in RUNTIMES {
            let (rtt, mbps) = pod_to_pod(&c, &cri, tag, handler, args.megabytes)?;
            println!("| {tag} | {rtt:.3} ms | {mbps} |");
        }
    }
    Ok(())
}
