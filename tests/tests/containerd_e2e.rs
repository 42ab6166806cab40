//! containerd → containerd-shim-hull-v2 → hull-vmm → hull-agent, through `ctr`, with
//! Debian's containerd 1.6 started privately by each test (tests/src/containerd.rs) and the
//! busybox image built offline. Every test ends by checking that nothing is left behind:
//! no VMM or shim process, no run directory, image, socket or mount.
//!
//! Sandboxes restore from the template cache (made by a cold boot the first time one is
//! needed), so each `ctr run` costs seconds, not a boot.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_e2e::containerd::{unavailable, Containerd, BUSYBOX, RUNTIME};

fn skip() -> bool {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

const CLEAN: Duration = Duration::from_secs(30);

fn run_args<'a>(id: &'a str, extra: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["run", "--runtime", RUNTIME];
    a.extend_from_slice(extra);
    a.push(BUSYBOX);
    a.push(id);
    a.extend_from_slice(cmd);
    a
}

fn delete(c: &Containerd, id: &str) {
    c.ctr_ok(&["task", "delete", id]);
    c.ctr_ok(&["container", "rm", id]);
}

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
fn read_only_volumes_are_copied_in_and_read_only_in_the_guest() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let dir = c.dir.path().join("vol");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("sub/greeting"), "hi from the host\n").unwrap();
    let file = c.dir.path().join("single.conf");
    std::fs::write(&file, "key=value\n").unwrap();
    let dir_mount = format!("type=bind,src={},dst=/data,options=rbind:ro", dir.display());
    let file_mount = format!(
        "type=bind,src={},dst=/etc/single.conf,options=rbind:ro",
        file.display()
    );
    let out = c.ctr_ok(&run_args(
        "vols",
        &["--rm", "--mount", &dir_mount, "--mount", &file_mount],
        &[
            "sh",
            "-c",
            "cat /data/sub/greeting /etc/single.conf; touch /data/x 2>&1; (echo > /etc/single.conf) 2>&1; true",
        ],
    ));
    assert!(out.starts_with("hi from the host\nkey=value\n"), "{out}");
    assert_eq!(
        out.matches("Read-only file system").count(),
        2,
        "both volumes refuse writes: {out}"
    );
    c.assert_clean(CLEAN);
}

/// Waits for `path` to hold `want` (what the guest writes reaches the host at once; the
/// bound is for this machine's emulated guest kernel).
fn wait_file(path: &std::path::Path, want: &str, within: Duration) {
    let t = Instant::now();
    loop {
        if std::fs::read_to_string(path).is_ok_and(|s| s == want) {
            return;
        }
        assert!(
            t.elapsed() < within,
            "{} never held {want:?} (it holds {:?})",
            path.display(),
            std::fs::read_to_string(path)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn read_write_volumes_are_shared_live_both_ways() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let dir = c.dir.path().join("rw");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("from-host"), "hello from the host\n").unwrap();
    let mount = format!("type=bind,src={},dst=/data,options=rbind:rw", dir.display());
    // A task of its own: reads what the host put there, writes back, makes a directory,
    // renames and removes.
    let out = c.ctr_ok(&run_args(
        "rw1",
        &["--rm", "--mount", &mount],
        &[
            "sh",
            "-c",
            "cat /data/from-host; echo from the guest > /data/tmp; mv /data/tmp /data/from-guest; \
             mkdir /data/made; rm /data/from-host; ls /data",
        ],
    ));
    assert_eq!(
        out,
        "hello from the host\nfrom-guest\nmade\n",
        "{}",
        c.log_tail(30)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("from-guest")).unwrap(),
        "from the guest\n"
    );
    assert!(dir.join("made").is_dir());
    assert!(!dir.join("from-host").exists());
    c.assert_clean(CLEAN);

    // A pod whose two containers bind the same directory (an emptyDir): one waits for a
    // file the host writes while it runs and answers in another; the second container
    // reads that answer. Live both ways, and shared between the pod's containers.
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("rwpod", &extra, &["sleep", "1000"]));
    c.wait_status("rwpod", "RUNNING", Duration::from_secs(60));
    let member = pod_member("rwpod");
    let mut extra: Vec<&str> = vec!["-d", "--mount", &mount];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args(
        "waiter",
        &extra,
        &[
            "sh",
            "-c",
            "while [ ! -f /data/go ]; do sleep 1; done; \
             echo \"seen: $(cat /data/go)\" > /data/answer; sleep 1000",
        ],
    ));
    c.wait_status("waiter", "RUNNING", Duration::from_secs(60));
    std::fs::write(dir.join("go"), "now").unwrap();
    wait_file(&dir.join("answer"), "seen: now\n", Duration::from_secs(60));
    let mut extra: Vec<&str> = vec!["--rm", "--mount", &mount];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr_ok(&run_args("reader", &extra, &["cat", "/data/answer"]));
    assert_eq!(out, "seen: now\n");
    assert_eq!(c.vmm_pids().len(), 1, "one VM for the pod");
    for id in ["waiter", "rwpod"] {
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        c.wait_status(id, "STOPPED", Duration::from_secs(30));
        delete(&c, id);
    }
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

fn tmux(args: &[&str]) -> String {
    let out = std::process::Command::new("tmux")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_screen(session: &str, want: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if screen.contains(want) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "{want:?} did not appear within {within:?}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn terminal_session_types_resizes_and_exits() {
    if skip() {
        return;
    }
    if std::process::Command::new("tmux")
        .arg("-V")
        .output()
        .is_err()
    {
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
    wait_screen(&session, "#", Duration::from_secs(90));
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

const POD: &[&str] = &["--annotation", "io.kubernetes.cri.container-type=sandbox"];

fn pod_member(sandbox: &str) -> Vec<String> {
    vec![
        "--annotation".into(),
        "io.kubernetes.cri.container-type=container".into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
    ]
}

#[test]
fn pod_containers_share_one_vm() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("pod1", &extra, &["sleep", "1000"]));
    c.wait_status("pod1", "RUNNING", Duration::from_secs(60));
    let member = pod_member("pod1");
    let mut extra: Vec<&str> = vec!["--rm"];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr_ok(&run_args(
        "app1",
        &extra,
        &["sh", "-c", "echo from the pod; hostname"],
    ));
    assert!(out.starts_with("from the pod\n"), "{out}");
    let mut extra: Vec<&str> = vec!["-d"];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args("app2", &extra, &["sleep", "1000"]));
    c.wait_status("app2", "RUNNING", Duration::from_secs(60));
    // A member with a memory limit that allocates past it is OOM-killed (137, TaskOOM);
    // the limit is the container's cgroup in the pod's VM, whose size the sandbox chose.
    let mut events = c
        .ctr_command(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut extra: Vec<&str> = vec!["--rm", "--memory-limit", "16777216"];
    extra.extend(member.iter().map(String::as_str));
    let out = c.ctr(&run_args("hog", &extra, &["sh", "-c", "tail /dev/zero"]));
    assert_eq!(out.status.code(), Some(137), "{}", c.log_tail(30));
    // SAFETY: kill(2) of the `ctr events` child this test started.
    unsafe { libc::kill(events.id() as i32, libc::SIGTERM) };
    let mut seen = String::new();
    std::io::Read::read_to_string(events.stdout.as_mut().unwrap(), &mut seen).unwrap();
    let _ = events.wait();
    assert!(
        seen.contains("/tasks/oom"),
        "no /tasks/oom event in:\n{seen}"
    );
    assert_eq!(c.vmm_pids().len(), 1, "the pod's containers share one VM");
    let shims = c
        .hull_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
        .count();
    assert_eq!(shims, 1, "and one shim");
    for id in ["app2", "pod1"] {
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id]);
        c.wait_status(id, "STOPPED", Duration::from_secs(30));
        delete(&c, id);
    }
    c.assert_clean(CLEAN);
}

#[test]
fn killed_vmm_stops_every_task_and_delete_cleans_up() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let mut extra = vec!["-d"];
    extra.extend_from_slice(POD);
    c.ctr_ok(&run_args("pod2", &extra, &["sleep", "1000"]));
    c.wait_status("pod2", "RUNNING", Duration::from_secs(60));
    let member = pod_member("pod2");
    let mut extra: Vec<&str> = vec!["-d"];
    extra.extend(member.iter().map(String::as_str));
    c.ctr_ok(&run_args("member", &extra, &["sleep", "1000"]));
    c.wait_status("member", "RUNNING", Duration::from_secs(60));
    let vmm = c.vmm_pids();
    assert_eq!(vmm.len(), 1);
    let t = Instant::now();
    // SAFETY: kill(2) of the VMM this test's containerd started.
    unsafe { libc::kill(vmm[0] as i32, libc::SIGKILL) };
    c.wait_status("pod2", "STOPPED", Duration::from_secs(15));
    c.wait_status("member", "STOPPED", Duration::from_secs(15));
    eprintln!(
        "both tasks stopped {:.1} s after the VMM was killed",
        t.elapsed().as_secs_f64()
    );
    for id in ["member", "pod2"] {
        delete(&c, id);
    }
    c.assert_clean(CLEAN);
}

#[test]
fn killed_shim_is_cleaned_up_by_delete() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    // A read-only volume, as a Kubernetes Secret arrives: its copy lives on tmpfs (the run
    // directory), private, and the crash path's `delete` removes it.
    let secret = c.dir.path().join("secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("token"), "s3cr3t").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/var/run/secrets/x,options=rbind:ro",
        secret.display()
    );
    c.ctr_ok(&run_args(
        "orphan",
        &["-d", "--mount", &mount],
        &["sleep", "1000"],
    ));
    c.wait_status("orphan", "RUNNING", Duration::from_secs(60));
    let copies: Vec<_> = std::fs::read_dir(&c.run_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("volumes-"))
        .flat_map(|e| std::fs::read_dir(e.path()).unwrap().flatten())
        .map(|e| e.path())
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "one volume copy in the run directory: {copies:?}"
    );
    {
        use std::os::unix::fs::MetadataExt;
        let mode = std::fs::metadata(&copies[0]).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", copies[0].display());
        let dir_mode = std::fs::metadata(copies[0].parent().unwrap())
            .unwrap()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
    }
    let shim = c
        .hull_processes()
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-hull-v2"))
        .map(|(p, _)| p)
        .expect("the shim runs");
    // SAFETY: kill(2) of the shim this test's containerd started.
    unsafe { libc::kill(shim as i32, libc::SIGKILL) };
    // containerd notices the dead shim and runs the shim binary's `delete`, which stops
    // the VM it left and removes its state.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.task_status("orphan");
        if status.is_none() || status.as_deref() == Some("STOPPED") {
            break;
        }
        assert!(Instant::now() < deadline, "task still {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = c.ctr(&["task", "delete", "orphan"]);
    c.ctr_ok(&["container", "rm", "orphan"]);
    c.assert_clean(CLEAN);
}

#[test]
fn unresponsive_agent_fails_calls_within_the_timeout() {
    if skip() {
        return;
    }
    // Long enough for a container's creation on an emulated-guest host (20 s proved too
    // short on a busy one), short for a test.
    let c = Containerd::start("agent_timeout_secs = 60");
    c.ctr_ok(&run_args("hung", &["-d"], &["sleep", "1000"]));
    c.wait_status("hung", "RUNNING", Duration::from_secs(120));
    let api = std::fs::read_dir(&c.run_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("api.sock"))
        .find(|p| p.exists())
        .expect("the sandbox's control socket");
    // A paused VM runs no guest code: its agent cannot answer.
    let vmm = hull_protocol::rpc::connect_vmm(&api).unwrap();
    let ctx = || hull_protocol::rpc::ttrpc::context::with_timeout(10_000_000_000);
    let empty = hull_protocol::rpc::protobuf::well_known_types::empty::Empty::new;
    vmm.pause(ctx(), &empty()).unwrap();
    let t = Instant::now();
    let out = c.ctr(&["task", "ps", "hung"]);
    let took = t.elapsed();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not answer within 60 s"),
        "the error says what happened: {err}"
    );
    assert!(took < Duration::from_secs(120), "failed after {took:?}");
    vmm.resume(ctx(), &empty()).unwrap();
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "hung"]);
    c.wait_status("hung", "STOPPED", Duration::from_secs(30));
    delete(&c, "hung");
    c.assert_clean(CLEAN);
}

#[test]
fn bad_input_is_refused_clearly_and_leaks_nothing() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    // A read-write bind of a single host file: only directories are shared.
    let file = c.dir.path().join("single-file");
    std::fs::write(&file, "x").unwrap();
    let file_mount = format!(
        "type=bind,src={},dst=/host,options=rbind:rw",
        file.display()
    );
    let out = c.ctr(&run_args(
        "bind",
        &["--rm", "--mount", &file_mount],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/host") && err.contains("not single files"),
        "{err}"
    );
    let _ = c.ctr(&["container", "rm", "bind"]);
    // Runtime options naming a configuration file that is not there.
    let out = c.ctr(&run_args(
        "noconf",
        &["--rm", "--runtime-config-path", "/no/such/hull.toml"],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/hull.toml"), "{err}");
    let _ = c.ctr(&["container", "rm", "noconf"]);
    // A read-only volume whose source is missing.
    let out = c.ctr(&run_args(
        "novol",
        &[
            "--rm",
            "--mount",
            "type=bind,src=/no/such/dir,dst=/data,options=rbind:ro",
        ],
        &["true"],
    ));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/no/such/dir"), "{err}");
    let _ = c.ctr(&["container", "rm", "novol"]);

    // A rootfs that is not there.
    let missing = c.dir.path().join("no-such-rootfs");
    std::fs::create_dir_all(&missing).unwrap();
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        missing.to_str().unwrap(),
        "norootfs",
        "true",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rootfs"), "{err}");
    let _ = c.ctr(&["container", "rm", "norootfs"]);
    std::fs::remove_dir(&missing).unwrap();

    // A command that does not exist in the image.
    let out = c.ctr(&run_args("nocmd", &["--rm"], &["/no/such/program"]));
    assert!(!out.status.success());
    let _ = c.ctr(&["container", "rm", "nocmd"]);
    c.assert_clean(CLEAN);
    // And the shim still serves.
    assert_eq!(
        c.ctr_ok(&run_args("after", &["--rm"], &["echo", "ok"])),
        "ok\n"
    );
    c.assert_clean(CLEAN);
}

#[test]
fn twenty_create_delete_cycles_leak_nothing() {
    if skip() {
        return;
    }
    let c = Containerd::start("");
    let t = Instant::now();
    for i in 0..20 {
        let id = format!("cycle{i}");
        let out = c.ctr_ok(&run_args(&id, &["--rm"], &["echo", "cycle"]));
        assert_eq!(out, "cycle\n");
        c.assert_clean(CLEAN);
    }
    eprintln!(
        "20 cycles in {:.1} s ({:.1} s each)",
        t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64() / 20.0
    );
    c.assert_clean(CLEAN);
}
