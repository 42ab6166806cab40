//! hull-guest-test: the guest half of hull's device end-to-end test. The agent runs it
//! (`hull.run=/usr/libexec/hull/guest-test,devices,...`) and the host half reads its
//! console lines, all prefixed `guest-test: `; it powers the VM off when it exits.
//!
//! `bench VSOCK_PORT` serves the device benchmark (`bench-devices` on the host): one
//! command per vsock connection (echo, sink, source N, blk-seq DEV N, blk-rand DEV COUNT
//! SIZE, net-send N, net-recv, quit).
//!
//! `devices VSOCK_PORT HOST_PORT CONNECTIONS`:
//! - entropy: reads /dev/hwrng and names the kernel's current hwrng;
//! - block: every disk but the root (vda): serial, size and an FNV-1a 64 hash of its
//!   content, and for a read-only disk whether a write to it is refused;
//! - vsock: listens on VSOCK_PORT and echoes CONNECTIONS host connections byte for byte
//!   (each until the host half-closes), then connects to the host's HOST_PORT, sends a
//!   greeting and prints the reply;
//! - network (when eth0 exists): brings eth0 up as 10.0.0.2/24, sends a UDP datagram to
//!   10.0.0.1:9000 (the host end of the tap) and prints the reply.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(format!("guest-test: {line}\n").as_bytes());
    let _ = out.flush();
}

fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn entropy() {
    let sysfs = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/misc/hw_random/{f}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|e| format!("unknown({e})"))
    };
    let current = sysfs("rng_current");
    // A quality above zero makes the kernel's hwrng thread feed the crng from it.
    let quality = sysfs("rng_quality");
    let mut buf = [0u8; 32];
    match File::open("/dev/hwrng").and_then(|mut f| f.read_exact(&mut buf)) {
        Ok(()) => {
            let distinct = {
                let mut v = buf.to_vec();
                v.sort_unstable();
                v.dedup();
                v.len()
            };
            say(&format!(
                "hwrng ok current={current} bytes=32 distinct={distinct} quality={quality}"
            ));
        }
        Err(e) => say(&format!("hwrng FAIL current={current}: {e}")),
    }
}

fn block() {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        say("blk FAIL: no /sys/block");
        return;
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd") && n != "vda")
        .collect();
    names.sort();
    for name in names {
        let serial = std::fs::read_to_string(format!("/sys/block/{name}/serial"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro"))
            .map(|s| s.trim() == "1")
            .unwrap_or(false);
        let path = format!("/dev/{name}");
        let mut hash = FNV_OFFSET;
        let mut total = 0u64;
        let result = File::open(&path).and_then(|mut f| {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                hash = fnv1a64(hash, &buf[..n]);
                total += n as u64;
            }
        });
        let write = if ro { write_refused(&path) } else { "skipped" };
        match result {
            Ok(()) => say(&format!(
                "blk {name} serial={serial} ro={} bytes={total} fnv={hash:016x} write={write}",
                u8::from(ro)
            )),
            Err(e) => say(&format!("blk {name} FAIL: {e}")),
        }
    }
}

/// Tries to overwrite the first 4 KiB of a read-only disk. Linux lets the write reach the
/// device (it only warns about read-only block devices), so this checks the VMM's refusal.
fn write_refused(path: &str) -> &'static str {
    let result = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| {
            f.write_all(&[0xa5; 4096])?;
            f.sync_all()
        });
    match result {
        Ok(()) => "accepted",
        Err(_) => "refused",
    }
}

fn vsock_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket we just created and own exclusively.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: an all-zero sockaddr_vm is a valid value of the type.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

fn check(rc: libc::c_int) -> std::io::Result<libc::c_int> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn vsock_listen(port: u32) -> std::io::Result<OwnedFd> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    })?;
    // SAFETY: listen on a bound socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
    Ok(fd)
}

fn vsock_accept(listener: &OwnedFd) -> std::io::Result<File> {
    // SAFETY: accept with null address pointers is allowed.
    let fd = check(unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: accept returned a new descriptor that we now own.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

fn vsock_connect(cid: u32, port: u32) -> std::io::Result<File> {
    let fd = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_vm of `len` bytes.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            len,
        )
    })?;
    Ok(File::from(fd))
}

fn shutdown_write(f: &File) {
    // SAFETY: shutdown on a socket we own; no memory is involved.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

/// Echoes until EOF; returns the byte count and an FNV hash of what passed.
fn echo(conn: &mut File) -> std::io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 64 << 10];
    let (mut total, mut hash) = (0u64, FNV_OFFSET);
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            shutdown_write(conn);
            return Ok((total, hash));
        }
        conn.write_all(&buf[..n])?;
        hash = fnv1a64(hash, &buf[..n]);
        total += n as u64;
    }
}

fn vsock(port: u32, host_port: u32, connections: u32) {
    let listener = match vsock_listen(port) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("vsock FAIL listen {port}: {e}"));
            return;
        }
    };
    say(&format!("vsock listening port={port}"));
    for i in 0..connections {
        let result = vsock_accept(&listener).and_then(|mut c| echo(&mut c));
        match result {
            Ok((n, h)) => say(&format!("vsock echoed conn={i} bytes={n} fnv={h:016x}")),
            Err(e) => say(&format!("vsock FAIL conn={i}: {e}")),
        }
    }
    let reply = vsock_connect(libc::VMADDR_CID_HOST, host_port).and_then(|mut c| {
        c.write_all(b"hello from the guest")?;
        shutdown_write(&c);
        let mut reply = String::new();
        c.read_to_string(&mut reply)?;
        Ok(reply)
    });
    match reply {
        Ok(r) => say(&format!("vsock host-reply={r}")),
        Err(e) => say(&format!("vsock FAIL connect host port {host_port}: {e}")),
    }
}

#[repr(C)]
struct IfReqAddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    addr: libc::sockaddr_in,
    _pad: [u8; 8],
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifname(name: &str) -> [libc::c_char; libc::IFNAMSIZ] {
    let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
    for (d, s) in n.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    n
}

/// Gives `dev` the IPv4 address `addr`/24 and brings it up, with plain ioctls.
fn configure_ipv4(dev: &str, addr: [u8; 4]) -> std::io::Result<()> {
    // SAFETY: plain socket creation; the result is checked.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a socket we just created and own exclusively.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let sin = |a: [u8; 4]| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a),
        },
        sin_zero: [0; 8],
    };
    for (req, a) in [
        (libc::SIOCSIFADDR, addr),
        (libc::SIOCSIFNETMASK, [255, 255, 255, 0]),
    ] {
        let mut r = IfReqAddr {
            name: ifname(dev),
            addr: sin(a),
            _pad: [0; 8],
        };
        // SAFETY: the request reads an ifreq, which `r` is laid out as.
        check(unsafe { libc::ioctl(sock.as_raw_fd(), req, &mut r) })?;
    }
    let mut f = IfReqFlags {
        name: ifname(dev),
        flags: 0,
        _pad: [0; 22],
    };
    // SAFETY: SIOCGIFFLAGS fills an ifreq, which `f` is laid out as.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut f) })?;
    f.flags |= libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the same ifreq.
    check(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut f) })?;
    Ok(())
}

fn network() {
    if !std::path::Path::new("/sys/class/net/eth0").exists() {
        return;
    }
    let mac = std::fs::read_to_string("/sys/class/net/eth0/address")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let result = configure_ipv4("eth0", [10, 0, 0, 2]).and_then(|()| {
        let sock = std::net::UdpSocket::bind("10.0.0.2:40000")?;
        sock.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
        sock.send_to(b"hello from eth0", "10.0.0.1:9000")?;
        let mut buf = [0u8; 256];
        let (n, from) = sock.recv_from(&mut buf)?;
        Ok(format!("{}:{from}", String::from_utf8_lossy(&buf[..n])))
    });
    match result {
        Ok(reply) => say(&format!("net eth0 mac={mac} reply={reply}")),
        Err(e) => say(&format!("net FAIL eth0 mac={mac}: {e}")),
    }
}

/// Nanoseconds on the guest's monotonic clock.
fn now_ns() -> u128 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos()
}

/// Reads `len` bytes from `path` with O_DIRECT (the guest page cache out of the way) in
/// `chunk`-byte reads at the offsets `next` yields; returns the elapsed nanoseconds.
fn direct_reads(
    path: &str,
    chunk: usize,
    offsets: impl Iterator<Item = u64>,
) -> std::io::Result<u128> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    // O_DIRECT needs an aligned buffer: over-allocate and slice at a 4 KiB boundary.
    let mut raw = vec![0u8; chunk + 4096];
    let skew = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skew..skew + chunk];
    let t0 = now_ns();
    for off in offsets {
        f.read_exact_at(buf, off)?;
    }
    Ok(now_ns() - t0)
}

/// One benchmark command per vsock connection, its first line naming it. Replies are one
/// line each; `quit` ends the service.
fn bench_command(conn: &mut File) -> std::io::Result<bool> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while conn.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let words: Vec<&str> = line.split_whitespace().collect();
    let n = |i: usize| {
        words
            .get(i)
            .and_then(|w| w.parse::<u64>().ok())
            .unwrap_or(0)
    };
    match words.first().copied() {
        Some("echo") => {
            echo(conn)?;
        }
        Some("sink") => {
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let k = conn.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                total += k as u64;
            }
            conn.write_all(format!("{total}\n").as_bytes())?;
        }
        Some("source") => {
            let buf = vec![0x5au8; 64 << 10];
            let mut left = n(1);
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                conn.write_all(&buf[..k])?;
                left -= k as u64;
            }
        }
        Some("blk-seq") => {
            let (dev, len) = (words.get(1).copied().unwrap_or("/dev/vdb"), n(2));
            let chunk = 64u64 << 10;
            let ns = direct_reads(dev, chunk as usize, (0..len / chunk).map(|i| i * chunk))?;
            conn.write_all(format!("{ns}\n").as_bytes())?;
        }
        Some("blk-rand") => {
            let (dev, count, size) = (words.get(1).copied().unwrap_or("/dev/vdb"), n(2), n(3));
            let blocks = (size / 4096).max(1);
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let offsets = (0..count).map(move |_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % blocks) * 4096
            });
            let ns = direct_reads(dev, 4096, offsets)?;
            conn.write_all(format!("{ns}\n").as_bytes())?;
        }
        Some("net-send") => {
            // Guest -> host over TCP through eth0.
            let mut s = std::net::TcpStream::connect("10.0.0.1:9001")?;
            let buf = vec![0xa5u8; 64 << 10];
            let mut left = n(1);
            while left > 0 {
                let k = left.min(buf.len() as u64) as usize;
                s.write_all(&buf[..k])?;
                left -= k as u64;
            }
            drop(s);
            conn.write_all(b"sent\n")?;
        }
        Some("net-recv") => {
            // Host -> guest over TCP: read until the host closes.
            let mut s = std::net::TcpStream::connect("10.0.0.1:9002")?;
            let mut buf = vec![0u8; 64 << 10];
            let mut total = 0u64;
            loop {
                let k = s.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                total += k as u64;
            }
            conn.write_all(format!("{total}\n").as_bytes())?;
        }
        Some("quit") => {
            conn.write_all(b"bye\n")?;
            return Ok(false);
        }
        _ => conn.write_all(format!("unknown command {line:?}\n").as_bytes())?,
    }
    Ok(true)
}

/// `bench PORT`: serves the host benchmark's commands on vsock PORT until `quit`.
fn bench(port: u32) {
    if std::path::Path::new("/sys/class/net/eth0").exists() {
        if let Err(e) = configure_ipv4("eth0", [10, 0, 0, 2]) {
            say(&format!("bench FAIL eth0: {e}"));
        }
    }
    let listener = match vsock_listen(port) {
        Ok(l) => l,
        Err(e) => {
            say(&format!("bench FAIL listen {port}: {e}"));
            return;
        }
    };
    say(&format!("bench listening port={port}"));
    loop {
        let result = vsock_accept(&listener).and_then(|mut c| bench_command(&mut c));
        match result {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => say(&format!("bench command failed: {e}")),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: u32| {
        args.get(i)
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(default)
    };
    match args.first().map(String::as_str) {
        Some("devices") => {
            entropy();
            block();
            network();
            vsock(num(1, 1234), num(2, 4321), num(3, 1));
            say("done");
            ExitCode::SUCCESS
        }
        Some("bench") => {
            bench(num(1, 1234));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: hull-guest-test devices VSOCK_PORT HOST_PORT CONNECTIONS | bench VSOCK_PORT"
            );
            ExitCode::from(2)
        }
    }
}
