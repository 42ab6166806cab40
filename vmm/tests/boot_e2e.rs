//! End-to-end: the real `hull-vmm` binary boots the cached guest kernel and root image to
//! hull-agent's readiness marker. Each boot is bounded by a timeout; on hosts whose KVM
//! emulates guest kernel code a boot takes 30 to 40 seconds.
//!
//! Needs the artifacts `scripts/build.sh` produces (HULL_KERNEL / HULL_ROOTFS override the
//! default cache paths) and /dev/kvm; only the latter's absence skips.

use std::process::Command;
use std::time::{Duration, Instant};

use common::{boot, finish, has_line, kvm_available, vmm};
use hull_protocol::boot::READY_MARKER;

mod common;

#[test]
fn boots_to_agent_ready_and_powers_off_cleanly() {
    if !kvm_available() {
        return;
    }
    let f = boot(vmm("hull.ready=poweroff"));
    let context = f.context();
    assert_eq!(f.code, Some(0), "{context}");
    assert!(
        has_line(&f.stdout, &format!("{READY_MARKER} cpus=0")),
        "{context}"
    );
    assert!(f.stdout.contains("hull-agent: powering off"), "{context}");
    assert!(f.stderr.contains("guest stage agent-ready"), "{context}");
    assert!(f.stderr.contains("guest powered off"), "{context}");
}

#[test]
fn boots_an_smp_guest_with_every_vcpu_online() {
    if !kvm_available() {
        return;
    }
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if host_cpus < 2 {
        eprintln!("skipped: the host has one CPU, an SMP guest needs two");
        return;
    }
    let mut cmd = vmm("hull.ready=poweroff");
    cmd.args(["--vcpus", "2"]);
    let f = boot(cmd);
    let context = f.context();
    assert_eq!(f.code, Some(0), "{context}");
    assert!(
        has_line(&f.stdout, &format!("{READY_MARKER} cpus=0-1")),
        "{context}"
    );
}

#[test]
fn guest_kernel_panic_exits_nonzero_with_the_reason() {
    if !kvm_available() {
        return;
    }
    // The last init= wins: the kernel cannot run it and panics.
    let f = boot(vmm("init=/no/such/init"));
    let context = f.context();
    assert_eq!(f.code, Some(3), "{context}");
    assert!(f.stderr.contains("guest kernel panicked"), "{context}");
    assert!(!f.stdout.contains(READY_MARKER), "{context}");
}

#[test]
fn sigterm_stops_a_running_vm_in_order() {
    if !kvm_available() {
        return;
    }
    let child = vmm("hull.ready=wait").spawn().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // SAFETY: kill(2) on the PID of a child we own and have not reaped.
    let rc = unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let started = Instant::now();
    let f = finish(child, Duration::from_secs(30));
    assert_eq!(f.code, Some(0), "log:\n{}", f.stderr);
    assert!(
        f.stderr.contains("stopped by signal 15"),
        "log:\n{}",
        f.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn invalid_configuration_exits_2_without_starting_a_vm() {
    let out = Command::new(env!("CARGO_BIN_EXE_hull-vmm"))
        .args(["--kernel", "/nonexistent/vmlinux", "--vcpus", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kernel") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!err.contains("started"), "{err}");
}
