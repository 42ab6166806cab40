//! End-to-end: the real guest kernel's virtio drivers against hull-vmm's devices. One boot
//! runs the guest half (`/usr/libexec/hull/guest-test devices`, started by the agent
//! through `hull.run=`) while this test plays the host half:
//!
//! - entropy: the guest's current hwrng is virtio_rng.0, /dev/hwrng gives bytes, and its
//!   quality is non-zero, so the kernel's hwrng thread seeds the crng from it;
//! - block: two data disks besides the root, each with its own serial (GET_ID): a
//!   read-only one reads back with the content hash computed here, a guest write to it is
//!   refused and the file is unchanged afterwards; a writable one from a config file
//!   reads back too;
//! - vsock: through the hybrid socket the host reaches the guest's echo listener and gets
//!   every byte back (1 MiB by default; for the 1 GiB run, which takes most of an hour on
//!   hosts whose KVM emulates guest kernel code and so exceeds nextest's per-test limit:
//!   `HULL_E2E_VSOCK_BYTES=1073741824 cargo test --release -p hull-vmm --test devices_e2e
//!   -- --nocapture`), a
//!   second connection works after the first, and the guest's own connection to host port
//!   4321 reaches the listener on `<uds>_4321`;
//! - network: in a network namespace of the test's own, a tap (handed to the VMM as an
//!   open descriptor, as a CNI plugin would) carries a UDP exchange between the guest's
//!   eth0 and a socket on the host end.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{finish, has_line, kvm_available, vmm, KillOnDrop, BOOT_TIMEOUT};

mod common;

const GUEST_PORT: u32 = 1234;
const HOST_PORT: u32 = 4321;
const DISK_BYTES: usize = 1 << 20;
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
fn fnv1a64(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A deterministic byte stream (xorshift64 words), so both ends can produce and check a
/// large transfer in pieces of any size without holding it.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Connects to guest port `port` through the hybrid socket, retrying while the guest is
/// still booting (until then the VMM answers with a closed stream).
fn connect_guest(uds: &Path, port: u32, deadline: Instant) -> UnixStream {
    loop {
        assert!(
            Instant::now() < deadline,
            "guest never accepted on vsock port {port}"
        );
        let Ok(mut s) = UnixStream::connect(uds) else {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while s.read(&mut byte).unwrap_or(0) == 1 {
            line.push(byte[0]);
            if byte[0] == b'\n' {
                break;
            }
        }
        if line.starts_with(b"OK ") && line.ends_with(b"\n") {
            s.set_read_timeout(None).unwrap();
            return s;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sends `total` pattern bytes, half-closes, and checks the echo byte for byte.
fn echo_check(stream: UnixStream, total: u64) -> u64 {
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let mut pattern = Pattern::new(SEED);
        let mut buf = vec![0u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            pattern.fill(&mut buf[..n]);
            writer.write_all(&buf[..n]).unwrap();
            left -= n as u64;
        }
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let mut expect = Pattern::new(SEED);
    let mut buf = vec![0u8; 64 << 10];
    let mut want = vec![0u8; 64 << 10];
    let mut got = 0u64;
    let mut hash = FNV_OFFSET;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        expect.fill(&mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "echo differs within bytes {got}..{}",
            got + n as u64
        );
        hash = fnv1a64(hash, &buf[..n]);
        got += n as u64;
    }
    sender.join().unwrap();
    assert_eq!(got, total, "echo ended early");
    hash
}

/// Moves this thread (and the VMM it will spawn) into a fresh network namespace with a
/// tap whose host end is 10.0.0.1/24. Returns the tap and a UDP socket on the host end,
/// or None where namespaces are not permitted.
fn private_tap() -> Option<(hull_vmm::devices::virtio::net::Tap, std::net::UdpSocket)> {
    let Some(tap) = common::tap_in_new_netns("hull-e2e0", "10.0.0.1/24") else {
        eprintln!("network part skipped: cannot create a network namespace (needs root)");
        return None;
    };
    let sock = std::net::UdpSocket::bind("10.0.0.1:9000").unwrap();
    Some((tap, sock))
}

#[test]
fn guest_drivers_use_entropy_block_vsock_and_net_devices() {
    if !kvm_available() {
        return;
    }
    let total: u64 = std::env::var("HULL_E2E_VSOCK_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    let mut content = vec![0u8; DISK_BYTES];
    Pattern::new(42).fill(&mut content);
    std::fs::write(&disk, &content).unwrap();
    let disk_fnv = fnv1a64(FNV_OFFSET, &content);

    // A second, writable disk with its own serial, from a config file.
    let scratch = dir.path().join("scratch.img");
    let mut scratch_content = vec![0u8; 256 << 10];
    Pattern::new(7).fill(&mut scratch_content);
    std::fs::write(&scratch, &scratch_content).unwrap();
    let scratch_fnv = fnv1a64(FNV_OFFSET, &scratch_content);
    let config = dir.path().join("vm.toml");
    std::fs::write(
        &config,
        format!(
            "[[drive]]\npath = {:?}\nread_only = false\nserial = \"scratch-01\"\nformat = \"raw\"\n",
            scratch
        ),
    )
    .unwrap();

    let uds = dir.path().join("v.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", uds.display())).unwrap();
    let host_side = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut greeting = String::new();
        s.read_to_string(&mut greeting).unwrap();
        s.write_all(b"hello guest").unwrap();
        greeting
    });

    let net = private_tap();
    let udp_side = net.as_ref().map(|(_, sock)| {
        let sock = sock.try_clone().unwrap();
        sock.set_read_timeout(Some(BOOT_TIMEOUT)).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            sock.send_to(b"hello eth0", from).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    });

    let mut cmd = vmm(&format!(
        "hull.run=/usr/libexec/hull/guest-test,devices,{GUEST_PORT},{HOST_PORT},2"
    ));
    cmd.arg("--config")
        .arg(&config)
        .arg("--vsock-uds")
        .arg(&uds)
        .arg("--drive")
        .arg(format!("{}:ro", disk.display()));
    if let Some((tap, _)) = &net {
        cmd.arg("--net")
            .arg(format!("fd={},mac=02:00:00:00:00:02", tap.as_raw_fd()));
    }
    let started = Instant::now();
    let mut child = KillOnDrop(Some(cmd.spawn().unwrap()));
    // Boot, then the transfer at no less than 100 KB/s each way.
    let budget = BOOT_TIMEOUT + Duration::from_secs(total / 100_000);
    let deadline = started + budget;

    let first = connect_guest(&uds, GUEST_PORT, deadline);
    let t0 = Instant::now();
    let echo_fnv = echo_check(first, total);
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "vsock echo: {total} bytes each way in {secs:.1} s ({:.2} MB/s each way)",
        total as f64 / secs / 1e6
    );
    let mut second = connect_guest(&uds, GUEST_PORT, deadline);
    second.write_all(b"second connection").unwrap();
    second.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    second.read_to_string(&mut back).unwrap();
    assert_eq!(back, "second connection");

    let f = finish(child.take(), budget.saturating_sub(started.elapsed()));
    let ctx = f.context();
    assert_eq!(f.code, Some(0), "{ctx}");
    assert_eq!(host_side.join().unwrap(), "hello from the guest");
    let console = &f.stdout;
    let hwrng = console
        .lines()
        .find(|l| l.starts_with("guest-test: hwrng ok current=virtio_rng.0 bytes=32"))
        .unwrap_or_else(|| panic!("no hwrng line\n{ctx}"));
    let quality: u32 = hwrng
        .trim_end()
        .rsplit("quality=")
        .next()
        .and_then(|q| q.parse().ok())
        .unwrap_or(0);
    assert!(
        quality > 0,
        "the kernel does not feed its crng from virtio-rng: {hwrng}"
    );
    assert!(
        has_line(
            console,
            &format!(
                "guest-test: blk vdc serial=data.img ro=1 bytes={DISK_BYTES} fnv={disk_fnv:016x} write=refused"
            )
        ),
        "{ctx}"
    );
    assert!(
        has_line(
            console,
            &format!(
                "guest-test: blk vdb serial=scratch-01 ro=0 bytes={} fnv={scratch_fnv:016x} write=skipped",
                256 << 10
            )
        ),
        "{ctx}"
    );
    assert!(
        has_line(
            console,
            &format!("guest-test: vsock echoed conn=0 bytes={total} fnv={echo_fnv:016x}")
        ),
        "{ctx}"
    );
    assert!(
        has_line(console, "guest-test: vsock host-reply=hello guest"),
        "{ctx}"
    );
    assert!(has_line(console, "guest-test: done"), "{ctx}");
    if let Some(udp) = udp_side {
        assert_eq!(udp.join().unwrap(), "hello from eth0");
        assert!(
            has_line(
                console,
                "guest-test: net eth0 mac=02:00:00:00:00:02 reply=hello eth0:10.0.0.1:9000"
            ),
            "{ctx}"
        );
    }
    assert!(
        std::fs::read(&disk).unwrap() == content,
        "the read-only disk changed"
    );
    assert!(!uds.exists(), "the VMM removes its vsock socket on exit");
}
