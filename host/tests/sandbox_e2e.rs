//! End-to-end through the host sandbox library and real guests: sandboxes restored from
//! the template cache (made by a cold boot the first time) answer, run containers, stay
//! independent of each other, and a snapshot taken in the middle of a workload restores
//! and lets it finish. Each step's wall time is printed: on hosts whose KVM emulates guest
//! kernel code every guest syscall costs milliseconds.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use hull_host::agent::{Agent, ProcessId};
use hull_host::spec::SandboxFiles;
use hull_host::stdio::{Stdio, Target};
use hull_host::template::DEFAULT_ROOT;
use hull_host::{Sandbox, StartPath, TemplateCache, VmSpec};
use hull_protocol::rpc::Endpoint;
use hull_protocol::stream::{Header, Kind};

/// The image's read-only busybox rootfs (resources/build-image.sh).
const ROOTFS: &str = "/usr/share/hull/rootfs/busybox";

/// The sandbox's agent with a generous call timeout (guest syscalls are slow here).
fn agent(s: &Sandbox) -> Agent {
    s.agent.with_timeout(Duration::from_secs(300))
}

/// Whether this host can run the guest tests; says `skipped: ...` when not.
fn guest_available() -> bool {
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm {
        eprintln!("skipped: /dev/kvm is not available to this user");
        return false;
    }
    let spec = VmSpec::default();
    for p in [&spec.kernel, &spec.image] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/build.sh",
            p.display()
        );
    }
    let _ = env_logger::builder().is_test(true).try_init();
    true
}

fn start(run_dir: &Path) -> Sandbox {
    let t = Instant::now();
    let s = Sandbox::start(
        &VmSpec::default(),
        run_dir,
        Some(&TemplateCache::new(DEFAULT_ROOT)),
    )
    .unwrap_or_else(|e| panic!("sandbox start: {}", hull_vmm_api::error_chain(&e)));
    eprintln!(
        "sandbox {}: VMM ready {:.0} ms, agent {:.0} ms, usable {:.0} ms (call took {:.1} s)",
        s.path,
        s.timings.vmm_ready.as_secs_f64() * 1e3,
        s.timings.agent_ready.as_secs_f64() * 1e3,
        s.timings.ready.as_secs_f64() * 1e3,
        t.elapsed().as_secs_f64()
    );
    assert!(
        matches!(s.path, StartPath::Template { .. }),
        "did not restore from the template: {}",
        s.path
    );
    s
}

fn create_sandbox(s: &Sandbox, hostname: &str) {
    let files = SandboxFiles {
        hostname: Some(hostname.into()),
        ..Default::default()
    };
    agent(s)
        .create_sandbox(&files)
        .unwrap_or_else(|e| panic!("CreateSandbox: {e}"));
}

fn spec(args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": ROOTFS, "readonly": true},
        "hostname": "e2e",
        "process": {
            "args": args,
            "cwd": "/",
            "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0},
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}, {"type": "ipc"}]
        }
    }))
    .unwrap()
}

fn step(what: &str, t: Instant) {
    eprintln!("{what}: {:.1} s", t.elapsed().as_secs_f64());
}

/// Creates container `id`; with `stdout`, the agent keeps its output for a stream (read
/// by the test itself, not through a host relay).
fn create(agent: &Agent, id: &str, args: &[&str], stdout: bool) {
    let t = Instant::now();
    let stdio = Stdio {
        stdout: if stdout {
            Target::Inherit(1)
        } else {
            Target::Null
        },
        ..Default::default()
    };
    let pid = agent
        .create_container(id, spec(args), &stdio)
        .unwrap_or_else(|e| panic!("CreateContainer {id}: {e}"));
    assert!(pid > 1);
    step(&format!("CreateContainer {id}"), t);
}

fn wait(agent: &Agent, id: &str) -> i32 {
    agent
        .wait(ProcessId::init(id))
        .unwrap_or_else(|e| panic!("WaitProcess {id}: {e}"))
}

/// Runs `args` in a new container; returns its exit status and standard output.
fn run(s: &Sandbox, id: &str, args: &[&str]) -> (i32, String) {
    let agent = agent(s);
    create(&agent, id, args, true);
    let endpoint = Endpoint::HybridVsock(s.paths().vsock.clone());
    let mut out = endpoint
        .open_stream(&Header::new(Kind::Stdout, id, ""))
        .unwrap();
    let t = Instant::now();
    agent.start_container(id).unwrap();
    let code = wait(&agent, id);
    let mut text = String::new();
    out.read_to_string(&mut text).unwrap();
    step(&format!("start and wait {id}"), t);
    (code, text)
}

#[test]
fn a_restored_sandbox_answers_and_runs_a_container() {
    if !guest_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path());
    s.ping().unwrap();

    // The control API of a restored VMM: a paused VM does not answer, a resumed one does.
    let m = s.control.metrics().unwrap();
    assert!(!m.paused && m.vcpus == 1 && m.memory_mib == 128, "{m:?}");
    assert!(s.control.pause().unwrap());
    assert!(
        s.agent.with_timeout(Duration::from_secs(3)).ping().is_err(),
        "a paused guest answered"
    );
    s.resume().unwrap();
    s.ping().unwrap();

    create_sandbox(&s, "restored");
    let (code, out) = run(
        &s,
        "echo",
        &["sh", "-c", "echo hello from $(hostname); exit 3"],
    );
    assert_eq!(code, 3);
    assert_eq!(out, "hello from e2e\n");
    let stats = agent(&s).stats("echo").unwrap();
    assert!(stats.cpu.usage_usec > 0, "no CPU time accounted: {stats:?}");
    agent(&s).remove_container("echo").unwrap();
    agent(&s).destroy_sandbox().unwrap();
    let status = s.shutdown().expect("the VMM was already gone");
    assert!(status.success(), "hull-vmm exited {status} after Shutdown");
}

/// Two sandboxes from one template run side by side: separate containers, separate
/// kernels, and different random numbers (each got fresh host entropy after its restore).
#[test]
fn sandboxes_restored_from_one_template_are_independent() {
    if !guest_available() {
        return;
    }
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let sandboxes: Vec<Sandbox> = dirs.iter().map(|d| start(d.path())).collect();
    for (s, name) in sandboxes.iter().zip(["one", "two"]) {
        create_sandbox(s, name);
    }
    let random = [
        "sh",
        "-c",
        "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'",
    ];
    let outputs: Vec<(i32, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = sandboxes
            .iter()
            .map(|s| scope.spawn(move || run(s, "rng", &random)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (code, out) in &outputs {
        assert_eq!(*code, 0);
        assert_eq!(out.len(), 32, "not 16 bytes of hex: {out:?}");
    }
    assert_ne!(
        outputs[0].1, outputs[1].1,
        "two sandboxes from one template produced the same random bytes"
    );
    // The container exists only in the sandbox that made it.
    agent(&sandboxes[0]).remove_container("rng").unwrap();
    let gone = agent(&sandboxes[0]).stats("rng");
    assert!(gone.is_err(), "removed container still there");
    agent(&sandboxes[1])
        .stats("rng")
        .expect("the other sandbox lost its container");
    for s in sandboxes {
        s.kill();
    }
}

/// A snapshot taken while a container runs restores into a new VMM, and the container
/// finishes there with its own exit status.
#[test]
fn a_snapshot_taken_mid_workload_restores_and_continues() {
    if !guest_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let first_run = dir.path().join("first");
    let second_run = dir.path().join("second");
    let snap = dir.path().join("snap");
    for d in [&first_run, &second_run] {
        std::fs::create_dir_all(d).unwrap();
    }
    let s = start(&first_run);
    create_sandbox(&s, "counter");
    let counter = "n=0; while [ $n -lt 8 ]; do n=$((n+1)); echo $n > /dev/shm/n; sleep 1; done; exit $((n+34))";
    create(&agent(&s), "count", &["sh", "-c", counter], false);
    agent(&s).start_container("count").unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let running = agent(&s).list_processes("count").unwrap();
    assert!(!running.is_empty(), "the loop ended before the snapshot");
    let t = Instant::now();
    s.snapshot(&snap).unwrap();
    step("snapshot mid-workload", t);
    s.kill();

    let t = Instant::now();
    let restored = Sandbox::restore(&VmSpec::default(), &second_run, &snap)
        .unwrap_or_else(|e| panic!("restore: {}", hull_vmm_api::error_chain(&e)));
    step("restore", t);
    let t = Instant::now();
    assert_eq!(
        wait(&agent(&restored), "count"),
        42,
        "the loop did not finish"
    );
    step("the container finished after the restore", t);
    restored.kill();
}

/// Every thread of a running sandbox's VMM (the virtio-fs worker included, which starts
/// when the guest first uses its share) is in the jail: not root, no capability in any
/// set (but the fs threads' two file capabilities), `no_new_privs`, exactly one seccomp filter (its kind's), the jail's mount
/// namespace with only the jail's mounts, and namespaces of its own. A control call that
/// names a host path instead of handing the file over is refused.
#[test]
fn every_thread_of_a_sandbox_vmm_is_jailed() {
    if !guest_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let s = start(&run_dir);
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    s.control.add_share("s0", &share).unwrap();
    agent(&s).mount_shared_fs(hull_host::SHARED_FS_TAG).unwrap();

    let pid = s.vmm_pid().unwrap();
    let proc = Path::new("/proc").join(pid.to_string());
    let ns = |p: &Path, kind: &str| std::fs::read_link(p.join("ns").join(kind)).unwrap();
    let me = Path::new("/proc/self");
    for kind in ["pid", "mnt", "ipc", "uts"] {
        assert_ne!(
            ns(&proc, kind),
            ns(me, kind),
            "the VMM shares our {kind} namespace"
        );
    }
    let jail = hull_host::launcher::JailPolicy::default();
    let mut threads = Vec::new();
    for task in std::fs::read_dir(proc.join("task")).unwrap().flatten() {
        let t = task.path();
        let comm = std::fs::read_to_string(t.join("comm")).unwrap();
        let status = std::fs::read_to_string(t.join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("{name} in {status}"))
                .trim()
                .to_string()
        };
        let who = format!("thread {}", comm.trim());
        let uid = jail.uid.to_string();
        assert_eq!(field("Uid:"), [uid.as_str(); 4].join("\t"), "{who}");
        let gid = jail.gid.to_string();
        assert_eq!(field("Gid:"), [gid.as_str(); 4].join("\t"), "{who}");
        assert_eq!(field("Groups:"), "", "{who}");
        // The fs worker alone holds CAP_DAC_OVERRIDE (1) and CAP_FOWNER (3): vmm/src/jail.rs
        // FS_CAPS, docs/security.md.
        let fs_caps = if comm.trim().starts_with("hull-fs") {
            format!("{:016x}", (1u64 << 1) | (1 << 3))
        } else {
            "0000000000000000".to_string()
        };
        for set in ["CapPrm:", "CapEff:"] {
            assert_eq!(field(set), fs_caps, "{who} {set}");
        }
        for set in ["CapInh:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(set), "0000000000000000", "{who} {set}");
        }
        assert_eq!(field("NoNewPrivs:"), "1", "{who}");
        // Its kind's seccomp filter and only that one: filters stack on the threads a
        // filtered thread creates, so a second filter would mean a thread was created by
        // a thread of another kind (hull_vmm::seccomp).
        assert_eq!(
            field("Seccomp:"),
            "2",
            "{who} runs without a seccomp filter"
        );
        assert_eq!(
            field("Seccomp_filters:"),
            "1",
            "{who} runs under stacked filters"
        );
        assert_eq!(ns(&t, "mnt"), ns(&proc, "mnt"), "{who} is outside the jail");
        threads.push(comm.trim().to_string());
    }
    assert!(
        threads.iter().any(|t| t == "hull-fs"),
        "the fs worker never started: {threads:?}"
    );
    for kind in ["hull-vmm", "vcpu0", "hull-fs-start", "listener_loop"] {
        assert!(threads.iter().any(|t| t == kind), "no {kind}: {threads:?}");
    }
    let status = std::fs::read_to_string(proc.join("status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.ends_with("\t1"),
        "not PID 1 of its own namespace: {nspid}"
    );
    let mounts: Vec<String> = std::fs::read_to_string(proc.join("mountinfo"))
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            format!("{} {}", f[4], f[5].split(',').next().unwrap())
        })
        .collect();
    assert_eq!(
        mounts,
        [
            "/ ro",
            "/dev/kvm rw",
            "/dev/null rw",
            "/dev/urandom rw",
            "/proc rw"
        ],
        "the jail's mount table"
    );
    let limits = std::fs::read_to_string(proc.join("limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().nth(3) == Some(&jail.max_open_files.to_string())),
        "{limits}"
    );

    // Without the hand-over, a path is all the VMM gets, and a jailed one refuses it.
    let raw =
        hull_vmm_api::ControlClient::connect(&s.paths().api, Duration::from_secs(30)).unwrap();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let e = raw.attach_drive(0, &image, true, "x").unwrap_err();
    let text = hull_vmm_api::error_chain(&e);
    assert!(text.contains("jailed"), "{text}");
    // Handed over, the same disk attaches.
    assert_eq!(s.control.attach_drive(0, &image, true, "x").unwrap(), 2048);
    s.control.detach_drive(0).unwrap();
    s.kill();
}
