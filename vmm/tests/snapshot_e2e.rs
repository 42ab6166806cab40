//! End-to-end at the VMM level: boot the image to agent-ready, snapshot it through the
//! control API, restore it in new VMM processes with new vsock sockets (the agent answers;
//! two restored VMs run at once), and refuse corrupt, foreign and mismatched snapshots
//! with a clear message and exit status 2. (The host library's template tests are in
//! shim/tests/sandbox_e2e.rs.)

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{kvm_available, vmm, KillOnDrop, BOOT_TIMEOUT};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::protobuf::well_known_types::empty::Empty;
use hull_protocol::rpc::vmm::SnapshotRequest;
use hull_protocol::rpc::{connect_vmm, connect_within, ttrpc, Endpoint};

mod common;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(BOOT_TIMEOUT.as_nanos() as i64)
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Some(s) = child.try_wait().unwrap() {
            panic!("hull-vmm exited ({s}) before {} appeared", path.display());
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_snapshot_of_a_ready_guest_restores_and_answers() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    let uds = dir.path().join("boot.vsock");
    let api = dir.path().join("boot.api");
    let mut cmd = vmm("");
    cmd.arg("--vsock-uds").arg(&uds).arg("--api-sock").arg(&api);
    cmd.stdout(std::process::Stdio::null());
    let mut booted = KillOnDrop(Some(cmd.spawn().unwrap()));
    let t = Instant::now();
    let conn = connect_within(
        &Endpoint::HybridVsock(uds),
        BOOT_TIMEOUT,
        Duration::from_millis(500),
    )
    .expect("agent never answered");
    eprintln!(
        "cold boot to agent-ready: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    drop(conn);

    let control = connect_vmm(&api).unwrap();
    assert!(control.pause(ctx(), &Empty::new()).unwrap().paused);
    let mut req = SnapshotRequest::new();
    req.dir = snap.to_string_lossy().into_owned();
    let info = control.snapshot(ctx(), &req).unwrap();
    eprintln!("snapshot: {info:?}");
    control.shutdown(ctx(), &Empty::new()).unwrap();
    let status = booted.take().wait().unwrap();
    assert!(status.success(), "{status}");

    // Two VMs restored from the one snapshot, running at the same time.
    let mut running = Vec::new();
    for i in 0..2 {
        let uds = dir.path().join(format!("r{i}.vsock"));
        let t = Instant::now();
        let mut cmd = vmm("");
        cmd.arg("--vsock-uds").arg(&uds).arg("--restore").arg(&snap);
        cmd.stdout(std::process::Stdio::null());
        let mut restored = KillOnDrop(Some(cmd.spawn().unwrap()));
        // The socket appears once the guest has handled the transport reset.
        wait_for_socket(&uds, restored.0.as_mut().unwrap());
        let conn = connect_within(
            &Endpoint::HybridVsock(uds),
            Duration::from_secs(120),
            Duration::from_millis(20),
        )
        .expect("restored agent never answered");
        eprintln!(
            "restore {i}: agent answered {:.3} s after the VMM started",
            t.elapsed().as_secs_f64()
        );
        running.push((restored, conn));
    }
    for (_, conn) in &running {
        conn.client.ping(ctx(), &PingRequest::new()).unwrap();
    }
    drop(running);

    // Bad snapshots: refused before any VM exists, exit status 2, the reason named.
    let refused = |snapshot: &Path, extra: &[&str], expect: &str| {
        let mut cmd = vmm("");
        cmd.arg("--restore").arg(snapshot).args(extra);
        let out = common::boot(cmd);
        assert_eq!(out.code, Some(2), "{}", out.context());
        assert!(
            out.stderr.contains(expect),
            "wanted {expect:?}:\n{}",
            out.context()
        );
    };
    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(snap.join("memory"), bad.join("memory")).unwrap();
    let mut state = std::fs::read(snap.join("state")).unwrap();
    let last = state.len() - 1;
    state[last] ^= 0xff;
    std::fs::write(bad.join("state"), &state).unwrap();
    refused(&bad, &[], "is corrupt (checksum mismatch)");
    std::fs::write(bad.join("state"), b"{\"vcpus\": 1}").unwrap();
    refused(&bad, &[], "is not a hull snapshot state file");
    refused(&snap, &["--memory-mib", "256"], "memory_mib 128");
    std::fs::remove_file(snap.join("state")).unwrap();
    refused(&snap, &[], "open");
}
