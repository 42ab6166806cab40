//! End-to-end: the VMM boots the image, the host reaches the guest agent through the hybrid
//! vsock socket (protocol version checked), sets the guest clock and reseeds its CRNG, and a
//! container from the image's busybox rootfs runs `echo`, its output comes back over a stream connection and its exit code over
//! WaitProcess. Each step's wall time is printed: on hosts whose KVM emulates guest kernel
//! code every guest syscall costs milliseconds, so these are far from hardware figures.

use std::io::Read;
use std::time::{Duration, Instant};

use common::{kvm_available, vmm, KillOnDrop, BOOT_TIMEOUT};
use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::{connect, ttrpc, Endpoint};
use hull_protocol::stream::{Header, Kind};

mod common;

/// The image's read-only busybox rootfs (resources/build-image.sh).
const ROOTFS: &str = "/usr/share/hull/rootfs/busybox";

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(BOOT_TIMEOUT.as_nanos() as i64)
}

fn spec() -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": ROOTFS, "readonly": true},
        "hostname": "e2e",
        "process": {
            "args": ["sh", "-c", "echo hello from $(hostname); exit 3"],
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]
        }
    })
}

#[test]
fn a_container_in_the_guest_runs_echo_and_returns_its_exit_code() {
    if !kvm_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("vm.vsock");
    let api = dir.path().join("vm.api");
    let mut cmd = vmm("");
    cmd.arg("--vsock-uds").arg(&uds).arg("--api-sock").arg(&api);
    let mut vm = KillOnDrop(Some(cmd.spawn().unwrap()));
    let mut console = vm.0.as_mut().unwrap().stdout.take().unwrap();
    let console_text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = console_text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = console.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let context = || format!("console:\n{}", console_text.lock().unwrap());

    let started = Instant::now();
    let endpoint = Endpoint::HybridVsock(uds);
    let conn = loop {
        match connect(&endpoint, Duration::from_secs(60)) {
            Ok(c) => break c,
            Err(e) if started.elapsed() > BOOT_TIMEOUT => {
                panic!("agent never answered: {e}\n{}", context())
            }
            Err(e) => {
                if let Some(status) = vm.0.as_mut().unwrap().try_wait().unwrap() {
                    std::thread::sleep(Duration::from_millis(200)); // the console reader catches up
                    panic!(
                        "hull-vmm exited ({status}) before the agent answered ({e})\n{}",
                        context()
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    eprintln!(
        "agent answered after {:.1} s: {} (protocol {})",
        started.elapsed().as_secs_f64(),
        conn.hello.agent_version,
        conn.hello.protocol_version
    );
    let agent = conn.client;

    // The VMM's control API: a paused VM does not answer, a resumed one does.
    let control = hull_protocol::rpc::connect_vmm(&api).unwrap();
    let empty = hull_protocol::rpc::protobuf::well_known_types::empty::Empty::new;
    let m = control.metrics(ctx(), &empty()).unwrap();
    assert!(!m.paused && m.vcpus == 1 && m.memory_mib == 128, "{m:?}");
    assert!(m.guest_resident_kib > 0 && m.vmm_rss_kib > 0, "{m:?}");
    assert!(control.pause(ctx(), &empty()).unwrap().paused);
    let short = || ttrpc::context::with_timeout(Duration::from_secs(3).as_nanos() as i64);
    assert!(
        agent.ping(short(), &PingRequest::new()).is_err(),
        "a paused guest answered"
    );
    assert!(control.metrics(ctx(), &empty()).unwrap().paused);
    assert!(!control.resume(ctx(), &empty()).unwrap().paused);
    agent
        .ping(ctx(), &PingRequest::new())
        .unwrap_or_else(|e| panic!("no answer after resume: {e}\n{}", context()));
    eprintln!("control API: pause, resume, metrics ok");
    let step = |what: &str, t: Instant| eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut sb = CreateSandboxRequest::new();
    sb.hostname = "sandbox".into();
    agent
        .create_sandbox(ctx(), &sb)
        .unwrap_or_else(|e| panic!("CreateSandbox: {e}\n{}", context()));
    step("CreateSandbox", t);

    // What the host does after restoring a snapshot: fix the clock, reseed the CRNG.
    let t = Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let mut time = SetTimeRequest::new();
    time.seconds = now.as_secs() as i64;
    time.nanoseconds = now.subsec_nanos();
    agent
        .set_time(ctx(), &time)
        .unwrap_or_else(|e| panic!("SetTime: {e}\n{}", context()));
    let mut seed = ReseedRandomRequest::new();
    seed.entropy = vec![0; 64];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut seed.entropy)
        .unwrap();
    agent
        .reseed_random(ctx(), &seed)
        .unwrap_or_else(|e| panic!("ReseedRandom: {e}\n{}", context()));
    step("SetTime + ReseedRandom", t);

    let t = Instant::now();
    let mut req = CreateContainerRequest::new();
    req.container_id = "echo".into();
    req.oci_spec_json = serde_json::to_vec(&spec()).unwrap();
    let mut stdio = Stdio::new();
    stdio.stdout = true;
    req.stdio = Some(stdio).into();
    let pid = agent
        .create_container(ctx(), &req)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", context()))
        .pid;
    step("CreateContainer", t);
    assert!(pid > 1);

    let mut out = endpoint
        .open_stream(&Header::new(Kind::Stdout, "echo", ""))
        .unwrap();
    let t = Instant::now();
    let mut start = ContainerRequest::new();
    start.container_id = "echo".into();
    agent
        .start_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", context()));
    step("StartContainer", t);
    let t = Instant::now();
    let mut wait = ProcessRequest::new();
    wait.container_id = "echo".into();
    let exit = agent.wait_process(ctx(), &wait).unwrap();
    step("WaitProcess", t);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    assert_eq!(exit.exit_status, 3, "{}", context());
    assert_eq!(text, "hello from e2e\n");

    // The guest's cgroup v2 paths: stats and freeze (on the now-empty cgroup).
    let t = Instant::now();
    let stats = agent
        .stats_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("StatsContainer: {e}\n{}", context()));
    assert!(stats.cpu.usage_usec > 0, "no CPU time accounted: {stats:?}");
    agent
        .pause_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("PauseContainer: {e}\n{}", context()));
    agent
        .resume_container(ctx(), &start)
        .unwrap_or_else(|e| panic!("ResumeContainer: {e}\n{}", context()));
    step("StatsContainer + Pause + Resume", t);

    let t = Instant::now();
    agent.remove_container(ctx(), &start).unwrap();
    agent
        .destroy_sandbox(
            ctx(),
            &hull_protocol::rpc::protobuf::well_known_types::empty::Empty::new(),
        )
        .unwrap();
    step("RemoveContainer + DestroySandbox", t);

    // Shutdown through the API: an orderly stop, exit status 0, socket removed.
    control.shutdown(ctx(), &empty()).unwrap();
    let mut child = vm.take();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the VMM did not stop after Shutdown"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "hull-vmm exited {status} after Shutdown");
    assert!(!api.exists(), "the VMM removes its API socket on exit");
}
