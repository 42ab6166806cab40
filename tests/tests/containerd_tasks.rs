//! Tasks through containerd: `ctr run` output, exit codes and stdin; detached tasks with
//! exec, pids, metrics, pause, resume, signals and memory updates; terminal sessions; a
//! configuration file named in the runtime options; a `FROM scratch` image with a
//! read-only root.
//!
//! The path: containerd → containerd-shim-hull-v2 → hull-vmm → hull-agent, through `ctr`, with
//! Debian's containerd 1.6 started privately by each test (tests/src/containerd.rs) and the
//! busybox image built offline. Every test ends by checking that nothing is left behind:
//! no VMM or shim process, no run directory, image, socket or mount.
//!
//! Sandboxes restore from the template cache (made by a cold boot the first time one is
//! needed), so each `ctr run` costs seconds, not a boot.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_e2e::containerd::{delete, run_args, skip, Containerd, BUSYBOX, CLEAN, RUNTIME};
use hull_e2e::terminal::{tmux, wait_screen};

#[test]
fn ctr_run_prints_output_propagates_exit_codes_and_feeds_stdin() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let t = Instant::now();
    let out = c.ctr_ok(&run_args("hello", &["--rm"], &["echo", "hello"]));
    assert_eq!(out, "hello\n");
    eprintln!(
        "ctr run --rm echo hello: {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let out = c.ctr(&run_args(
        "codes",
        &["--rm"],
        &["sh", "-c", "echo out; echo err >&2; exit 42"],
    ));
    assert_eq!(out.status.code(), Some(42), "{}", c.log_tail(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));

    let mut child = c
        .ctr_command(&run_args(
            "stdin",
            &["--rm"],
            &["sh", "-c", "cat; echo done"],
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped through\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "piped through\ndone\n"
    );
    c.assert_clean(CLEAN);
}

#[test]
fn detached_task_exec_pids_metrics_pause_resume_and_signals() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let mut events = c
        .ctr_command(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.ctr_ok(&run_args(
        "svc",
        &["-d"],
        &[
            "sh",
            "-c",
            "trap 'exit 7' TERM; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done",
        ],
    ));
    c.wait_status("svc", "RUNNING", Duration::from_secs(60));
    assert_eq!(c.vmm_pids().len(), 1, "one VM for the task");

    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo from exec; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", c.log_tail(30));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from exec\n");

    // The loop's shell is alone between one `sleep` and the next (on this machine's
    // emulated guest kernel, a good part of each second): ask until both show, bounded.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = c.ctr_ok(&["task", "ps", "svc"]);
        if pids.lines().count() >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "init and sleep at least: {pids}");
        std::thread::sleep(Duration::from_millis(300));
    }

    let metrics = c.ctr_ok(&["task", "metrics", "svc"]);
    let current = metrics
        .lines()
        .find_map(|l| l.strip_prefix("pids.current"))
        .map(|v| v.trim().parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no pids.current in {metrics}"));
    assert!(current >= 1, "{metrics}");
    assert!(metrics.contains("memory.usage"), "{metrics}");

    // Update (ctr 1.6 has no `task update`): straight to the shim's Task API, as
    // containerd's CRI calls it, then the new limit shows in the metrics.
    update_memory_limit(&c, "svc", 64 << 20);
    let metrics = c.ctr_ok(&["task", "metrics", "svc"]);
    let limit = metrics
        .lines()
        .find_map(|l| l.strip_prefix("memory.usage_limit"))
        .map(|v| v.trim().parse::<u64>().unwrap());
    assert_eq!(limit, Some(64 << 20), "{metrics}");

    let count = || {
        c.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "count",
            "svc",
            "cat",
            "/tmp/count",
        ])
        .trim()
        .parse::<u64>()
        .unwrap()
    };
    c.ctr_ok(&["task", "pause", "svc"]);
    assert_eq!(c.task_status("svc").as_deref(), Some("PAUSED"));
    // A paused container cannot run an exec; read the counter around the pause instead.
    std::thread::sleep(Duration::from_secs(3));
    c.ctr_ok(&["task", "resume", "svc"]);
    assert_eq!(c.task_status("svc").as_deref(), Some("RUNNING"));
    let before = count();
    std::thread::sleep(Duration::from_secs(3));
    assert!(count() > before, "the counter moves again after resume");

    c.ctr_ok(&["task", "kill", "--signal", "SIGTERM", "svc"]);
    c.wait_status("svc", "STOPPED", Duration::from_secs(30));
    let del = c.ctr(&["task", "delete", "svc"]);
    assert!(
        del.status.success(),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    // ctr reports a non-zero exit on delete as a warning naming the code.
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("exit code 7"),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    c.ctr_ok(&["container", "rm", "svc"]);

    c.ctr_ok(&run_args("hard", &["-d"], &["sleep", "1000"]));
    c.wait_status("hard", "RUNNING", Duration::from_secs(60));
    c.ctr_ok(&["task", "kill", "--all", "--signal", "SIGKILL", "hard"]);
    c.wait_status("hard", "STOPPED", Duration::from_secs(30));
    let del = c.ctr(&["task", "delete", "hard"]);
    assert!(
        String::from_utf8_lossy(&del.stderr).contains("exit code 137"),
        "{}",
        String::from_utf8_lossy(&del.stderr)
    );
    c.ctr_ok(&["container", "rm", "hard"]);
    c.assert_clean(CLEAN);

    // Every state change reached containerd as its task event.
    // SAFETY: kill(2) of the `ctr events` child this test started.
    unsafe { libc::kill(events.id() as i32, libc::SIGTERM) };
    let mut seen = String::new();
    std::io::Read::read_to_string(events.stdout.as_mut().unwrap(), &mut seen).unwrap();
    let _ = events.wait();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(seen.contains(topic), "no {topic} event in:\n{seen}");
    }
}

/// Calls the shim's Update for `id` with a memory limit, over the shim's own socket.
fn update_memory_limit(c: &Containerd, id: &str, bytes: u64) {
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::shim::shim::UpdateTaskRequest;
    use containerd_shim::protos::shim_sync::TaskClient;
    use containerd_shim::protos::ttrpc;
    let address = containerd_shim::socket_address(
        c.socket.to_str().unwrap(),
        hull_e2e::containerd::NAMESPACE,
        id,
    );
    let path = address.trim_start_matches("unix://");
    let client = TaskClient::new(ttrpc::Client::connect(&format!("unix://{path}")).unwrap());
    let mut req = UpdateTaskRequest::new();
    req.id = id.into();
    let mut any = Any::new();
    any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
    any.value = serde_json::to_vec(&serde_json::json!({"memory": {"limit": bytes}})).unwrap();
    req.resources = Some(any).into();
    client
        .update(ttrpc::context::with_timeout(60_000_000_000), &req)
        .unwrap_or_else(|e| panic!("Update: {e}"));
}

#[test]
fn terminal_session_types_resizes_and_exits() {
    if skip() {
        return;
    }
    if !hull_e2e::terminal::available() {
        eprintln!("skipped: tmux is not installed");
        return;
    }
    let c = Containerd::start("");
    let session = format!("hull-e2e-{}", std::process::id());
    let status_file = c.dir.path().join("status");
    let ctr = format!(
        "ctr --address {} --namespace {} run --rm -t --runtime {RUNTIME} {BUSYBOX} tty sh; echo $? > {}",
        c.socket.display(),
        hull_e2e::containerd::NAMESPACE,
        status_file.display()
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "100",
        "-y",
        "40",
        &ctr,
    ]);
    // The first task after an image build may cold-boot the template under load.
    wait_screen(&session, "#", Duration::from_secs(480));
    tmux(&[
        "send-keys",
        "-t",
        &session,
        "stty size; echo typed-$((6*7))",
        "Enter",
    ]);
    let screen = wait_screen(&session, "typed-42", Duration::from_secs(60));
    assert!(
        screen.contains("40 100"),
        "the pty has the window's size:\n{screen}"
    );
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "50"]);
    std::thread::sleep(Duration::from_secs(2));
    tmux(&["send-keys", "-t", &session, "clear; stty size", "Enter"]);
    wait_screen(&session, "50 120", Duration::from_secs(60));
    tmux(&["send-keys", "-t", &session, "exit 3", "Enter"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status_file.exists() {
        assert!(Instant::now() < deadline, "ctr did not end after exit");
        std::thread::sleep(Duration::from_millis(200));
    }
    tmux(&["kill-session", "-t", &session]);
    assert_eq!(std::fs::read_to_string(&status_file).unwrap().trim(), "3");
    c.assert_clean(CLEAN);
}

#[test]
fn runtime_options_name_another_config_file() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let alt = c.dir.path().join("alt-run");
    let alt_state = c.dir.path().join("alt-state");
    let conf = c.dir.path().join("alt.toml");
    std::fs::write(
        &conf,
        format!(
            "run_dir = \"{}\"\nstate_dir = \"{}\"\ndebug_console = true\n",
            alt.display(),
            alt_state.display()
        ),
    )
    .unwrap();
    c.ctr_ok(&run_args(
        "alt",
        &["-d", "--runtime-config-path", conf.to_str().unwrap()],
        &["sleep", "1000"],
    ));
    c.wait_status("alt", "RUNNING", Duration::from_secs(60));
    let vmm = c.hull_processes();
    assert!(
        vmm.iter()
            .any(|(_, cmd)| cmd.contains("hull-vmm") && cmd.contains("alt-run")),
        "the VM's sockets live in the named file's run_dir: {vmm:?}"
    );
    // The VM's description is the vm.json its command line names.
    let config = vmm
        .iter()
        .filter(|(_, cmd)| cmd.contains("hull-vmm"))
        .find_map(|(_, cmd)| {
            let mut words = cmd.split_whitespace();
            words.find(|w| *w == "--config")?;
            words.next().map(std::path::PathBuf::from)
        })
        .unwrap_or_else(|| panic!("no hull-vmm --config among {vmm:?}"));
    let vm: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    assert_eq!(
        vm["shared_fs"], "hull",
        "a sandbox VM has its virtio-fs device by default: {vm}"
    );
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "alt"]);
    c.wait_status("alt", "STOPPED", Duration::from_secs(30));
    delete(&c, "alt");
    c.assert_clean(CLEAN);
    assert_eq!(
        std::fs::read_dir(&alt).unwrap().count(),
        0,
        "nothing left in {}",
        alt.display()
    );
    // debug_console: the stopped VM's logs are kept, and its images are not.
    let logs = alt_state
        .join("logs")
        .join(hull_e2e::containerd::NAMESPACE)
        .join("alt");
    let vmm_log = std::fs::read_to_string(logs.join("vmm.log")).unwrap_or_default();
    assert!(
        vmm_log.contains("restored"),
        "the VMM log is kept in {}: {vmm_log:?}",
        logs.display()
    );
    assert!(logs.join("console.log").exists());
    assert!(!alt_state
        .join(hull_e2e::containerd::NAMESPACE)
        .join("alt")
        .exists());

    // shared_fs = false: no virtio-fs, and a read-write volume is refused by name before
    // any VM starts.
    let noshare = c.dir.path().join("noshare.toml");
    std::fs::write(&noshare, "shared_fs = false\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        c.dir.path().display()
    );
    let out = c.ctr(&run_args(
        "noshare",
        &[
            "--rm",
            "--runtime-config-path",
            noshare.to_str().unwrap(),
            "--mount",
            &mount,
        ],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("shared_fs = false"), "{err}");
    let _ = c.ctr(&["container", "rm", "noshare"]);
    c.assert_clean(CLEAN);
}

#[test]
fn a_scratch_image_runs_with_a_read_only_root() {
    if skip() {
        return;
    }
    // A `FROM scratch` image (Kubernetes' pause, distroless) has none of the mount points
    // a container needs (/proc, /sys, /dev); with a read-only root nothing may be written
    // to the image either, yet the container must run and its root stay read-only.
    let c = Containerd::start("");
    c.import_image("hull.local/scratch", &["--scratch"]);
    let out = c.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--rm",
        "--read-only",
        "hull.local/scratch:latest",
        "scratch1",
        "/bin/busybox",
        "sh",
        "-c",
        "/bin/busybox ls / | /bin/busybox tr '\\n' ' '; echo; \
         /bin/busybox head -c 8 /proc/1/cmdline; echo; /bin/busybox touch /written",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{stderr}\n{}",
        c.log_tail(30)
    );
    for dir in ["bin", "dev", "proc", "sys"] {
        assert!(
            stdout.split_whitespace().any(|w| w == dir),
            "/{dir} in the container's root: {stdout}"
        );
    }
    assert!(stdout.contains("/bin/bus"), "/proc is mounted: {stdout}");
    assert!(
        stdout.contains("Read-only file system") || stderr.contains("Read-only file system"),
        "the root stays read-only: {stdout}{stderr}"
    );
    c.assert_clean(CLEAN);
}
