//! bench-devices: throughput and latency of hull's virtio devices, measured from the host
//! against the guest's own drivers, side by side with the same work done on the host.
//!
//! One VM boots with the guest half (`guest-test bench`, run by the agent) serving
//! commands over vsock. Each figure is the median of `--runs` repetitions:
//! - vsock: 1-byte ping-pong round trip, and bulk throughput each way, against a unix
//!   socket pair on the host;
//! - block: sequential (64 KiB) and random (4 KiB) O_DIRECT reads of a data disk in the
//!   guest, against `pread` of the same file on the host;
//! - net (root only: a tap in a private network namespace): TCP throughput each way
//!   between the guest's eth0 and the host end of the tap, against TCP over loopback.
//!
//! For every transfer it also reports the CPU time of the VMM's device thread (the event
//! loop that runs the virtio devices) per GiB moved, from /proc schedstat.
//!
//! Not a test: it measures, it does not judge.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use hull_e2e::summary;

#[derive(Debug, Parser)]
#[command(about = "virtio device benchmark: guest drivers through hull-vmm against the host")]
struct Args {
    /// Repetitions of each measurement (medians are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// MiB per vsock transfer direction.
    #[arg(long, default_value_t = 4)]
    vsock_mib: u64,
    /// MiB per sequential block read.
    #[arg(long, default_value_t = 8)]
    blk_mib: u64,
    /// 4 KiB random reads per block run.
    #[arg(long, default_value_t = 256)]
    rand_reads: u64,
    /// MiB per network transfer direction.
    #[arg(long, default_value_t = 4)]
    net_mib: u64,
    /// Ping-pongs per latency run.
    #[arg(long, default_value_t = 100)]
    pings: usize,
    #[arg(long, default_value = "target/release/hull-vmm")]
    vmm: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_KERNEL)]
    kernel: PathBuf,
    #[arg(long, default_value = hull_vmm::config::DEFAULT_ROOT_IMAGE)]
    rootfs: PathBuf,
    /// Give up waiting for the guest after this many seconds.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

const PORT: u32 = 1234;
const DISK_MIB: u64 = 32;

/// Nanoseconds the thread `tid` of `pid` has run (first field of schedstat).
fn thread_cpu_ns(pid: u32, tid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

struct Guest {
    uds: PathBuf,
    vmm_pid: u32,
}

impl Guest {
    /// A connection carrying one command; retries while the guest boots.
    fn command(&self, line: &str, deadline: Instant) -> Result<UnixStream> {
        loop {
            if Instant::now() > deadline {
                bail!("the guest never answered on vsock port {PORT}");
            }
            if let Ok(mut s) = UnixStream::connect(&self.uds) {
                s.write_all(format!("CONNECT {PORT}\n").as_bytes())?;
                let mut ok = String::new();
                BufReader::new(&s).read_line(&mut ok)?;
                if ok.starts_with("OK ") {
                    s.write_all(format!("{line}\n").as_bytes())?;
                    return Ok(s);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn reply(s: &UnixStream) -> Result<String> {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.trim().to_string())
    }

    /// Device-thread CPU (ns) across `f`.
    fn cpu<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<(T, u64)> {
        let before = thread_cpu_ns(self.vmm_pid, self.vmm_pid);
        let v = f()?;
        Ok((v, thread_cpu_ns(self.vmm_pid, self.vmm_pid) - before))
    }
}

/// Median samples of one metric, with the host baseline and the VMM CPU per GiB.
#[derive(Default)]
struct Row {
    name: &'static str,
    unit: &'static str,
    guest: Vec<f64>,
    host: Vec<f64>,
    cpu_s_per_gib: Vec<f64>,
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn cpu_per_gib(ns: u64, bytes: u64) -> f64 {
    ns as f64 / 1e9 / (bytes as f64 / f64::from(1u32 << 30))
}

fn vsock_ping(g: &Guest, pings: usize, deadline: Instant) -> Result<f64> {
    let mut s = g.command("echo", deadline)?;
    let mut b = [0u8; 1];
    let mut rtts = Vec::new();
    for _ in 0..pings {
        let t = Instant::now();
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(summary(&rtts).map(|x| x.0).unwrap_or(0.0))
}

fn host_ping(pings: usize) -> Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let echo = std::thread::spawn(move || {
        let mut x = [0u8; 1];
        while b.read_exact(&mut x).is_ok() {
            if b.write_all(&x).is_err() {
                break;
            }
        }
    });
    let mut x = [0u8; 1];
    let mut rtts = Vec::new();
    for _ in 0..pings {
        let t = Instant::now();
        a.write_all(b"x")?;
        a.read_exact(&mut x)?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(a);
    let _ = echo.join();
    Ok(summary(&rtts).map(|x| x.0).unwrap_or(0.0))
}

fn write_n(w: &mut impl Write, n: u64) -> Result<()> {
    let buf = vec![0x3cu8; 64 << 10];
    let mut left = n;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        w.write_all(&buf[..k])?;
        left -= k as u64;
    }
    Ok(())
}

fn read_all(r: &mut impl Read) -> Result<u64> {
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            return Ok(total);
        }
        total += k as u64;
    }
}

fn host_stream_mbps(n: u64) -> Result<f64> {
    let (mut a, mut b) = UnixStream::pair()?;
    let t = Instant::now();
    let reader = std::thread::spawn(move || read_all(&mut b));
    write_n(&mut a, n)?;
    drop(a);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(mbps(got, t.elapsed()))
}

fn host_pread(path: &Path, chunk: usize, offsets: &[u64]) -> Result<Duration> {
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; chunk];
    let t = Instant::now();
    for off in offsets {
        f.read_exact_at(&mut buf, *off)?;
    }
    Ok(t.elapsed())
}

fn rand_offsets(count: u64, size: u64) -> Vec<u64> {
    let blocks = size / 4096;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % blocks) * 4096
        })
        .collect()
}

fn ip(args: &str) -> Result<()> {
    let ok = Command::new("ip")
        .args(args.split_whitespace())
        .status()?
        .success();
    if !ok {
        bail!("ip {args} failed");
    }
    Ok(())
}

/// A private network namespace (for this thread and the VMM it spawns) with a tap whose
/// host end is 10.0.0.1/24; None when not root.
fn private_tap() -> Option<hull_vmm::devices::virtio::net::Tap> {
    // SAFETY: unshare takes flags only; it affects the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("bench-devices: no network namespace (not root?): skipping net");
        return None;
    }
    let tap = hull_vmm::devices::virtio::net::Tap::open("hull-bench0").ok()?;
    ip("link set lo up").ok()?;
    ip("link set hull-bench0 up").ok()?;
    ip("addr add 10.0.0.1/24 dev hull-bench0").ok()?;
    // SAFETY: F_SETFD on a descriptor we own: the VMM inherits it.
    unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFD, 0) };
    Some(tap)
}

fn tcp_pair_mbps(addr: &str, n: u64) -> Result<f64> {
    let l = std::net::TcpListener::bind(addr)?;
    let addr = l.local_addr()?;
    let t = Instant::now();
    let reader = std::thread::spawn(move || -> Result<u64> {
        let (mut s, _) = l.accept()?;
        read_all(&mut s)
    });
    let mut c = std::net::TcpStream::connect(addr)?;
    write_n(&mut c, n)?;
    drop(c);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    Ok(mbps(got, t.elapsed()))
}

fn print_rows(rows: &[Row]) {
    println!(
        "| {:<40} | {:>12} | {:>12} | {:>7} | {:>16} |",
        "metric (median)", "hull guest", "host", "ratio", "VMM CPU s/GiB"
    );
    println!(
        "|{:-<42}|{:->14}|{:->14}|{:->9}|{:->18}|",
        "", "", "", "", ""
    );
    for r in rows {
        let g = summary(&r.guest).map(|x| x.0);
        let h = summary(&r.host).map(|x| x.0);
        let c = summary(&r.cpu_s_per_gib).map(|x| x.0);
        let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        let ratio = match (g, h) {
            (Some(g), Some(h)) if h > 0.0 && (0.01..100.0).contains(&(g / h)) => {
                format!("{:.3}", g / h)
            }
            (Some(g), Some(h)) if h > 0.0 => format!("{:.1e}", g / h),
            _ => "-".into(),
        };
        println!(
            "| {:<40} | {:>12} | {:>12} | {:>7} | {:>16} |",
            format!("{} ({})", r.name, r.unit),
            f(g),
            f(h),
            ratio,
            f(c)
        );
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
    let dir = std::env::temp_dir().join(format!("hull-bench-devices-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("data.img");
    {
        let mut f = std::fs::File::create(&disk)?;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..DISK_MIB {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf)?;
        }
    }
    let uds = dir.join("v.sock");
    let tap = private_tap();
    let mut cmd = Command::new(&a.vmm);
    cmd.arg("--kernel")
        .arg(&a.kernel)
        .arg("--root")
        .arg(&a.rootfs)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--drive")
        .arg(format!("{}:ro", disk.display()))
        .arg("--console")
        .arg("none")
        .arg("--cmdline-extra")
        .arg(format!(
            "hull.run=/usr/libexec/hull/guest-test,bench,{PORT}"
        ))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(t) = &tap {
        cmd.arg("--net")
            .arg(format!("fd={},mac=02:00:00:00:00:02", t.as_raw_fd()));
    }
    let mut child: Child = cmd.spawn().context("start hull-vmm")?;
    let g = Guest {
        uds,
        vmm_pid: child.id(),
    };
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    eprintln!("bench-devices: booting the guest (tens of seconds where KVM emulates it)");
    let result = run(&a, &g, &disk, tap.is_some(), deadline);
    if let Ok(s) = g.command("quit", deadline) {
        let _ = Guest::reply(&s);
    }
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let rows = result?;
    println!();
    println!(
        "device benchmark: {} run(s); vsock {} MiB, block {} MiB seq + {} x 4 KiB random over {} MiB, net {} MiB",
        a.runs, a.vsock_mib, a.blk_mib, a.rand_reads, DISK_MIB, a.net_mib
    );
    println!(
        "host KVM: {}",
        match hull_vmm::quirks::resolve(Default::default()) {
            hull_vmm::quirks::HostMode::Hardware => "hardware-assisted".to_string(),
            hull_vmm::quirks::HostMode::Emulated { why } => format!("emulated ({why})"),
        }
    );
    print_rows(&rows);
    Ok(())
}

fn run(a: &Args, g: &Guest, disk: &Path, net: bool, deadline: Instant) -> Result<Vec<Row>> {
    let mut ping = Row {
        name: "vsock round trip, 1 byte",
        unit: "us",
        ..Default::default()
    };
    let mut to_guest = Row {
        name: "vsock host -> guest",
        unit: "MB/s",
        ..Default::default()
    };
    let mut to_host = Row {
        name: "vsock guest -> host",
        unit: "MB/s",
        ..Default::default()
    };
    let mut seq = Row {
        name: "block sequential read, 64 KiB",
        unit: "MB/s",
        ..Default::default()
    };
    let mut rand = Row {
        name: "block random read, 4 KiB",
        unit: "IOPS",
        ..Default::default()
    };
    let mut net_out = Row {
        name: "net guest -> host, TCP",
        unit: "MB/s",
        ..Default::default()
    };
    let mut net_in = Row {
        name: "net host -> guest, TCP",
        unit: "MB/s",
        ..Default::default()
    };
    let vsock_bytes = a.vsock_mib << 20;
    let blk_bytes = a.blk_mib.min(DISK_MIB) << 20;
    let net_bytes = a.net_mib << 20;
    // The first command waits for the guest to boot.
    ping.guest.push(vsock_ping(g, a.pings, deadline)?);
    eprintln!("bench-devices: guest up; measuring");
    for run in 0..a.runs {
        eprintln!("bench-devices: run {}/{}", run + 1, a.runs);
        if run > 0 {
            ping.guest.push(vsock_ping(g, a.pings, deadline)?);
        }
        ping.host.push(host_ping(a.pings)?);

        let (d, cpu) = g.cpu(|| {
            let mut s = g.command("sink", deadline)?;
            let t = Instant::now();
            write_n(&mut s, vsock_bytes)?;
            s.shutdown(std::net::Shutdown::Write)?;
            let got: u64 = Guest::reply(&s)?.parse()?;
            if got != vsock_bytes {
                bail!("guest received {got} of {vsock_bytes} bytes");
            }
            Ok(t.elapsed())
        })?;
        to_guest.guest.push(mbps(vsock_bytes, d));
        to_guest.cpu_s_per_gib.push(cpu_per_gib(cpu, vsock_bytes));
        to_guest.host.push(host_stream_mbps(vsock_bytes)?);

        let (d, cpu) = g.cpu(|| {
            let mut s = g.command(&format!("source {vsock_bytes}"), deadline)?;
            let t = Instant::now();
            let got = read_all(&mut s)?;
            if got != vsock_bytes {
                bail!("host received {got} of {vsock_bytes} bytes");
            }
            Ok(t.elapsed())
        })?;
        to_host.guest.push(mbps(vsock_bytes, d));
        to_host.cpu_s_per_gib.push(cpu_per_gib(cpu, vsock_bytes));
        to_host.host.push(host_stream_mbps(vsock_bytes)?);

        let (ns, cpu) = g.cpu(|| {
            let s = g.command(&format!("blk-seq /dev/vdb {blk_bytes}"), deadline)?;
            Ok(Guest::reply(&s)?.parse::<u64>()?)
        })?;
        seq.guest.push(mbps(blk_bytes, Duration::from_nanos(ns)));
        seq.cpu_s_per_gib.push(cpu_per_gib(cpu, blk_bytes));
        let offsets: Vec<u64> = (0..blk_bytes / (64 << 10))
            .map(|i| i * (64 << 10))
            .collect();
        seq.host
            .push(mbps(blk_bytes, host_pread(disk, 64 << 10, &offsets)?));

        let size = DISK_MIB << 20;
        let (ns, cpu) = g.cpu(|| {
            let s = g.command(
                &format!("blk-rand /dev/vdb {} {size}", a.rand_reads),
                deadline,
            )?;
            Ok(Guest::reply(&s)?.parse::<u64>()?)
        })?;
        rand.guest.push(a.rand_reads as f64 / (ns as f64 / 1e9));
        rand.cpu_s_per_gib
            .push(cpu_per_gib(cpu, a.rand_reads * 4096));
        let d = host_pread(disk, 4096, &rand_offsets(a.rand_reads, size))?;
        rand.host.push(a.rand_reads as f64 / d.as_secs_f64());

        if net {
            let l = std::net::TcpListener::bind("10.0.0.1:9001")?;
            let (d, cpu) = g.cpu(|| {
                let _s = g.command(&format!("net-send {net_bytes}"), deadline)?;
                let (mut c, _) = l.accept()?;
                let t = Instant::now();
                let got = read_all(&mut c)?;
                if got != net_bytes {
                    bail!("host received {got} of {net_bytes} bytes over eth0");
                }
                Ok(t.elapsed())
            })?;
            net_out.guest.push(mbps(net_bytes, d));
            net_out.cpu_s_per_gib.push(cpu_per_gib(cpu, net_bytes));
            net_out.host.push(tcp_pair_mbps("127.0.0.1:0", net_bytes)?);

            let l = std::net::TcpListener::bind("10.0.0.1:9002")?;
            let (d, cpu) = g.cpu(|| {
                let s = g.command("net-recv", deadline)?;
                let (mut c, _) = l.accept()?;
                let t = Instant::now();
                write_n(&mut c, net_bytes)?;
                drop(c);
                let got: u64 = Guest::reply(&s)?.parse()?;
                if got != net_bytes {
                    bail!("guest received {got} of {net_bytes} bytes over eth0");
                }
                Ok(t.elapsed())
            })?;
            net_in.guest.push(mbps(net_bytes, d));
            net_in.cpu_s_per_gib.push(cpu_per_gib(cpu, net_bytes));
            net_in.host.push(tcp_pair_mbps("127.0.0.1:0", net_bytes)?);
        }
    }
    let mut rows = vec![ping, to_guest, to_host, seq, rand];
    if net {
        rows.push(net_out);
        rows.push(net_in);
    }
    Ok(rows)
}
