//! End-to-end at the VMM level: boot the image to agent-ready, snapshot it through the
//! control API, restore it in new VMM processes with new vsock sockets and the data disks
//! listed in another order (the agent answers; two restored VMs run at once), and refuse corrupt, foreign and mismatched snapshots
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

/// Boots the image with `extra` flags (vsock and control sockets in `dir`) to
/// agent-ready, then pauses, snapshots into `snap` and shuts it down through the API.
fn boot_and_snapshot(dir: &Path, extra: &[&str], snap: &Path) {
    let uds = dir.join("boot.vsock");
    let api = dir.join("boot.api");
    let mut cmd = vmm("");
    cmd.arg("--vsock-uds").arg(&uds).arg("--api-sock").arg(&api);
    cmd.args(extra).stdout(std::process::Stdio::null());
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
}

#[test]
fn a_snapshot_of_a_ready_guest_restores_and_answers() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("snap");
    // Two data disks with ids: the restores list them the other way round, so the VMM
    // creates them in another order, and each must get back its own MMIO window.
    let disks = |ids: &[&str]| {
        let drives: Vec<String> = ids
            .iter()
            .map(|id| {
                let img = dir.path().join(format!("{id}.img"));
                std::fs::write(&img, vec![0u8; 64 << 10]).unwrap();
                format!("{{\"id\": \"{id}\", \"path\": {:?}}}", img)
            })
            .collect();
        let path = dir.path().join(format!("{}.json", ids.join("-")));
        std::fs::write(&path, format!("{{\"drive\": [{}]}}", drives.join(", "))).unwrap();
        path
    };
    let booted = disks(&["a", "b"]);
    let reordered = disks(&["b", "a"]);
    boot_and_snapshot(dir.path(), &["--config", booted.to_str().unwrap()], &snap);

    // Two VMs restored from the one snapshot, running at the same time.
    let mut running = Vec::new();
    for i in 0..2 {
        let uds = dir.path().join(format!("r{i}.vsock"));
        let t = Instant::now();
        let mut cmd = vmm("");
        cmd.arg("--config").arg(&reordered);
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
    let other = disks(&["a", "c"]);
    refused(
        &snap,
        &["--config", other.to_str().unwrap()],
        "virtio devices [a (block), b (block),",
    );
    std::fs::remove_file(snap.join("state")).unwrap();
    refused(&snap, &[], "open");
}

/// A VM snapshotted with one tap and MAC is restored onto another tap in another network
/// namespace; the agent gives eth0 the new MAC and an address, and the guest kernel answers
/// on the new network (its ICMP "port unreachable" reaches a host socket, and the host's
/// neighbour table holds the new MAC).
#[test]
fn a_restored_vm_takes_a_new_tap_and_mac() {
    use std::os::fd::AsRawFd;
    if !kvm_available() {
        return;
    }
    // The test moves its own thread between namespaces: run it on a thread of its own.
    std::thread::spawn(|| {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("snap");
        let Some(tap_a) = common::tap_in_new_netns("hull-snap-a", "10.0.0.1/24") else {
            eprintln!("skipped: cannot create a network namespace (needs root)");
            return;
        };
        let net = format!("fd={},mac=02:00:00:00:00:0a", tap_a.as_raw_fd());
        boot_and_snapshot(dir.path(), &["--net", &net], &snap);
        drop(tap_a);

        let tap_b = common::tap_in_new_netns("hull-snap-b", "10.0.1.1/24").unwrap();
        let uds = dir.path().join("b.vsock");
        let mut cmd = vmm("");
        cmd.arg("--vsock-uds").arg(&uds).arg("--restore").arg(&snap);
        cmd.arg("--net")
            .arg(format!("fd={},mac=02:00:00:00:00:0b", tap_b.as_raw_fd()));
        cmd.stdout(std::process::Stdio::null());
        let mut restored = KillOnDrop(Some(cmd.spawn().unwrap()));
        wait_for_socket(&uds, restored.0.as_mut().unwrap());
        let conn = connect_within(
            &Endpoint::HybridVsock(uds),
            Duration::from_secs(120),
            Duration::from_millis(20),
        )
        .expect("restored agent never answered");
        let mut nic = Interface::new();
        nic.name = "eth0".into();
        nic.mac = "02:00:00:00:00:0b".into();
        nic.addresses = vec!["10.0.1.2/24".into()];
        let mut net = ConfigureNetworkRequest::new();
        net.interfaces = vec![nic];
        conn.client
            .configure_network(ctx(), &net)
            .unwrap_or_else(|e| panic!("ConfigureNetwork: {e}"));

        let sock = std::net::UdpSocket::bind("10.0.1.1:0").unwrap();
        sock.connect("10.0.1.2:9").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 16];
        loop {
            sock.send(b"anyone there?").unwrap();
            match sock.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                other => assert!(
                    Instant::now() < deadline,
                    "the restored guest never answered on the new tap: {other:?}"
                ),
            }
        }
        let neigh = std::process::Command::new("ip")
            .args(["neigh", "show", "10.0.1.2"])
            .output()
            .unwrap();
        let neigh = String::from_utf8_lossy(&neigh.stdout);
        assert!(neigh.contains("02:00:00:00:00:0b"), "{neigh}");
        drop(restored);
    })
    .join()
    .unwrap();
}
