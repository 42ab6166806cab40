//! Shared by hull-vmm's integration tests. Each test binary uses a different part.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether this user can open /dev/kvm; says `skipped: ...` when not.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("skipped: /dev/kvm is not available to this user");
    }
    ok
}

pub const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

pub fn artifact(var: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build.sh (or set {var})",
        path.display()
    );
    path
}

pub fn vmm(extra: &str) -> Command {
    let kernel = artifact("HULL_KERNEL", hull_vmm::config::DEFAULT_KERNEL);
    let rootfs = artifact("HULL_ROOTFS", hull_vmm::config::DEFAULT_ROOT_IMAGE);
    let mut c = Command::new(env!("CARGO_BIN_EXE_hull-vmm"));
    c.arg("--kernel")
        .arg(kernel)
        .arg("--root")
        .arg(rootfs)
        .arg("--cmdline-extra")
        .arg(extra)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Kills and reaps a spawned VMM if the test fails before waiting for it, so a failed
/// assertion never leaves a guest running.
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn take(&mut self) -> Child {
        self.0.take().expect("child already taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Waits for `child` with a deadline, killing it if the deadline passes.
pub fn finish(mut child: Child, timeout: Duration) -> Finished {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let f = Finished {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    };
    assert!(
        status.is_some(),
        "hull-vmm did not finish within {timeout:?}\nconsole:\n{}\nlog:\n{}",
        f.stdout,
        f.stderr
    );
    f
}

impl Finished {
    /// Everything the VMM printed, for assertion messages.
    pub fn context(&self) -> String {
        format!("console:\n{}\nlog:\n{}", self.stdout, self.stderr)
    }
}

/// Boots `cmd` to its end within the boot timeout.
pub fn boot(mut cmd: Command) -> Finished {
    finish(cmd.spawn().unwrap(), BOOT_TIMEOUT)
}

/// Whether the console printed exactly `line` (the guest tty ends lines with CR LF).
pub fn has_line(console: &str, line: &str) -> bool {
    console.lines().any(|l| l.trim_end() == line)
}

/// In a new network namespace (this thread and the VMMs it spawns), a tap named `name`
/// whose host end has `host_cidr`, its descriptor inheritable. None where namespaces are
/// not permitted.
pub fn tap_in_new_netns(
    name: &str,
    host_cidr: &str,
) -> Option<hull_vmm::devices::virtio::net::Tap> {
    use std::os::fd::AsRawFd;
    // SAFETY: unshare takes flags only; it affects the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return None;
    }
    let tap = hull_vmm::devices::virtio::net::Tap::open(name).unwrap();
    for args in [
        format!("link set {name} up"),
        format!("addr add {host_cidr} dev {name}"),
    ] {
        let ok = std::process::Command::new("ip")
            .args(args.split_whitespace())
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip {args}");
    }
    // SAFETY: F_SETFD on a descriptor we own; no memory is involved.
    unsafe { libc::fcntl(tap.as_raw_fd(), libc::F_SETFD, 0) };
    Some(tap)
}
