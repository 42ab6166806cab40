//! The agent served on this host over unix sockets, creating real containers from a busybox
//! rootfs. Needs root; skips with a message otherwise.

mod support;

use support::*;

#[test]
fn echo_returns_exit_codes_and_separates_stdout_from_stderr() {
    if !can_run("echo_returns_exit_codes") {
        return;
    }
    let agent = Agent::start();
    let (status, out, err) = agent.run("echo0", &["echo", "hello"], |_| {});
    assert_eq!((status, out.as_str(), err.as_str()), (0, "hello\n", ""));
    let (status, out, err) = agent.run(
        "echo3",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        |_| {},
    );
    assert_eq!((status, out.as_str(), err.as_str()), (3, "out\n", "err\n"));
    agent.stop();
}

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use hull_protocol::rpc::agent::*;
use hull_protocol::rpc::ttrpc::Code;
use hull_protocol::stream::{read_frame, Header, Kind};
use protobuf::Message;
use serde_json::json;

fn container_req(id: &str) -> ContainerRequest {
    let mut r = ContainerRequest::new();
    r.container_id = id.into();
    r
}

#[test]
fn stdin_is_piped_and_closed() {
    if !can_run("stdin_is_piped_and_closed") {
        return;
    }
    let agent = Agent::start();
    let mut stdio = out_err();
    stdio.stdin = true;
    agent
        .create("cat", &["sh", "-c", "tr a-z A-Z; echo done"], stdio, |_| {})
        .unwrap();
    let mut input = agent.stream(Kind::Stdin, "cat", "");
    let out = agent.stream(Kind::Stdout, "cat", "");
    agent.start_container("cat");
    // More than a pipe holds, so backpressure is exercised both ways.
    let chunk = "abcdefghij".repeat(10_000);
    let writer = std::thread::spawn(move || {
        write_all(&mut input, chunk.as_bytes());
        input.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let got = read_all(out);
    writer.join().unwrap();
    assert_eq!(agent.wait("cat", "").exit_status, 0);
    assert_eq!(got.len(), 100_000 + 5);
    assert!(got.starts_with("ABCDEFGHIJ") && got.ends_with("done\n"));
    agent.remove("cat");
    agent.stop();
}

#[test]
fn pty_session_with_resize() {
    if !can_run("pty_session_with_resize") {
        return;
    }
    let agent = Agent::start();
    // The CRI names containers and execs with 64 hex digits: a console socket named after
    // them would not fit a unix socket path.
    let tty = "7".repeat(64);
    let tty = tty.as_str();
    let mut stdio = Stdio::new();
    stdio.terminal = true;
    stdio.stdin = true;
    stdio.stdout = true;
    agent
        .create(
            tty,
            &["sh", "-c", "read line; echo got:$line; stty size; exit 7"],
            stdio,
            |_| {},
        )
        .unwrap();
    let pty = agent.stream(Kind::Pty, tty, "");
    agent.start_container(tty);
    let mut req = ResizePtyRequest::new();
    req.container_id = tty.into();
    req.rows = 42;
    req.columns = 101;
    agent.client.resize_pty(ctx(), &req).unwrap();
    // An exec with a terminal of its own, its id as long as the CRI's.
    let exec_id = "e".repeat(64);
    let mut exec = ExecProcessRequest::new();
    exec.container_id = tty.into();
    exec.exec_id = exec_id.clone();
    exec.oci_process_json = serde_json::to_vec(&json!({
        "args": ["sh", "-c", "echo exec-tty:$(tty); exit 4"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, "terminal": true
    }))
    .unwrap();
    let mut exec_stdio = Stdio::new();
    exec_stdio.terminal = true;
    exec_stdio.stdout = true;
    exec.stdio = Some(exec_stdio).into();
    agent.client.exec_process(ctx(), &exec).unwrap();
    let mut exec_out = String::new();
    let _ = BufReader::new(agent.stream(Kind::Pty, tty, &exec_id)).read_to_string(&mut exec_out);
    assert_eq!(agent.wait(tty, &exec_id).exit_status, 4);
    assert!(exec_out.contains("exec-tty:/dev/pts/"), "{exec_out:?}");
    let mut w = pty.try_clone().unwrap();
    w.write_all(b"hi\n").unwrap();
    let mut all = String::new();
    let mut r = BufReader::new(pty);
    let _ = r.read_to_string(&mut all);
    assert_eq!(agent.wait(tty, "").exit_status, 7);
    assert!(all.contains("got:hi"), "{all:?}");
    assert!(all.contains("42 101"), "{all:?}");
    // Resizing a process without a terminal says so.
    agent.create("plain", &["true"], out_err(), |_| {}).unwrap();
    req.container_id = "plain".into();
    let (code, msg) = status(agent.client.resize_pty(ctx(), &req).unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(msg.contains("no terminal"), "{msg}");
    agent.stop();
}

#[test]
fn exec_into_a_running_container_and_signals() {
    if !can_run("exec_into_a_running_container_and_signals") {
        return;
    }
    let agent = Agent::start();
    agent
        .create(
            "svc",
            &[
                "sh",
                "-c",
                "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
            ],
            out_err(),
            |_| {},
        )
        .unwrap();
    let out = agent.stream(Kind::Stdout, "svc", "");
    agent.start_container("svc");
    let mut lines = BufReader::new(out).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let mut req = ExecProcessRequest::new();
    req.container_id = "svc".into();
    req.exec_id = "e1".into();
    req.oci_process_json = serde_json::to_vec(&json!({
        "args": ["sh", "-c", "echo exec-sees-hostname:$(cat /proc/sys/kernel/hostname); exit 5"],
        "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}
    }))
    .unwrap();
    req.stdio = Some(out_err()).into();
    let pid = agent.client.exec_process(ctx(), &req).unwrap().pid;
    assert!(pid > 0);
    let exec_out = read_all(agent.stream(Kind::Stdout, "svc", "e1"));
    assert_eq!(agent.wait("svc", "e1").exit_status, 5);
    assert_eq!(exec_out, "exec-sees-hostname:box\n");
    // The same exec id twice is refused.
    let (code, _) = status(agent.client.exec_process(ctx(), &req).unwrap_err());
    assert_eq!(code, Code::ALREADY_EXISTS);
    // Once removed (containerd's DeleteProcess), the id can be used again.
    let mut rm = ProcessRequest::new();
    rm.container_id = "svc".into();
    rm.exec_id = "e1".into();
    agent.client.remove_process(ctx(), &rm).unwrap();
    let (code, _) = status(agent.client.remove_process(ctx(), &rm).unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    agent.client.exec_process(ctx(), &req).unwrap();
    assert_eq!(agent.wait("svc", "e1").exit_status, 5);

    // SIGTERM reaches the trap; the shell exits 42.
    agent.signal("svc", "", libc::SIGTERM, false).unwrap();
    assert_eq!(agent.wait("svc", "").exit_status, 42);
    // Signalling an exited process says it has exited.
    let (code, msg) = status(agent.signal("svc", "", libc::SIGTERM, false).unwrap_err());
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    agent.remove("svc");

    // SIGKILL: status 137, signal 9.
    agent
        .create("victim", &["sleep", "100"], Stdio::new(), |_| {})
        .unwrap();
    agent.start_container("victim");
    agent.signal("victim", "", libc::SIGKILL, false).unwrap();
    let w = agent.wait("victim", "");
    assert_eq!((w.exit_status, w.signal), (137, 9));
    agent.stop();
}

/// Reads the counter the container writes into its rootfs.
fn counter(agent: &Agent, id: &str) -> u64 {
    let path = agent.dir.path().join("rootfs").join(id).join("count");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn pause_stops_a_counter_and_stats_move_under_load() {
    if !can_run("pause_stops_a_counter") {
        return;
    }
    let agent = Agent::start();
    let init_pid = agent
        .create(
            "counter",
            &[
                "sh",
                "-c",
                "i=0; while :; do i=$((i+1)); echo $i > /count; done",
            ],
            Stdio::new(),
            |_| {},
        )
        .unwrap();
    agent.start_container("counter");
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&agent, "counter") < 10 {
        assert!(Instant::now() < deadline, "the counter never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = agent
        .client
        .stats_container(ctx(), &container_req("counter"))
        .unwrap();
    agent
        .client
        .pause_container(ctx(), &container_req("counter"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let paused_at = counter(&agent, "counter");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        counter(&agent, "counter"),
        paused_at,
        "the counter moved while paused"
    );
    agent
        .client
        .resume_container(ctx(), &container_req("counter"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(&agent, "counter") <= paused_at {
        assert!(Instant::now() < deadline, "the counter did not resume");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after = agent
        .client
        .stats_container(ctx(), &container_req("counter"))
        .unwrap();
    assert!(
        after.cpu.usage_usec > before.cpu.usage_usec,
        "cpu {} -> {}",
        before.cpu.usage_usec,
        after.cpu.usage_usec
    );
    assert!(after.memory.usage_bytes > 0);
    assert!(after.pids.current >= 1);
    let procs = agent
        .client
        .list_processes(ctx(), &container_req("counter"))
        .unwrap();
    assert!(procs.pids.contains(&init_pid), "{:?}", procs.pids);
    agent.signal("counter", "", libc::SIGKILL, true).unwrap();
    assert_eq!(agent.wait("counter", "").signal, 9);
    agent.stop();
}

#[test]
fn memory_limit_produces_an_oom_event() {
    if !can_run("memory_limit_produces_an_oom_event") {
        return;
    }
    let agent = Agent::start();
    let events = agent
        .endpoint
        .open_stream(&hull_protocol::stream::Header::new(Kind::Events, "", ""))
        .unwrap();
    // dd's 64 MiB block buffer does not fit in 16 MiB.
    agent
        .create(
            "hog",
            &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=4"],
            Stdio::new(),
            |s| {
                s["linux"]["resources"] = json!({"memory": {"limit": 16 << 20, "swap": 16 << 20}});
            },
        )
        .unwrap();
    agent.start_container("hog");
    let w = agent.wait("hog", "");
    assert_eq!(w.signal, 9, "the hog was not OOM-killed: {w:?}");
    let mut events = events;
    events
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut saw_oom = false;
    let mut saw_exit = false;
    while !(saw_oom && saw_exit) {
        let frame = read_frame(&mut events)
            .unwrap()
            .expect("event stream ended");
        let e = Event::parse_from_bytes(&frame).unwrap();
        if e.has_oom() {
            assert_eq!(e.oom().container_id, "hog");
            saw_oom = true;
        }
        if e.has_exit() && e.exit().container_id == "hog" {
            saw_exit = true;
        }
    }
    let stats = agent
        .client
        .stats_container(ctx(), &container_req("hog"))
        .unwrap();
    assert!(stats.memory.oom_kills >= 1);
    agent.stop();
}

#[test]
fn pids_limit_read_only_rootfs_user_namespace_and_seccomp() {
    if !can_run("pids_limit_read_only_rootfs_user_namespace_and_seccomp") {
        return;
    }
    let agent = Agent::start();
    let (status, _, err) = agent.run(
        "pids",
        &[
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 5 & done; wait",
        ],
        |s| s["linux"]["resources"] = json!({"pids": {"limit": 4}}),
    );
    assert!(err.contains("fork"), "status {status}, stderr {err:?}");

    let (status, _, err) = agent.run("ro", &["touch", "/newfile"], |s| {
        s["root"]["readonly"] = json!(true)
    });
    assert_ne!(status, 0);
    assert!(err.contains("Read-only file system"), "{err:?}");

    let (status, out, err) = agent.run(
        "userns",
        &["cat", "/proc/self/uid_map", "/proc/self/gid_map"],
        |s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user"}));
            s["linux"]["uidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
            s["linux"]["gidMappings"] =
                json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
        },
    );
    assert_eq!(status, 0, "{err}");
    let maps: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(maps, vec![vec!["0", "100000", "65536"]; 2]);

    let (status, _, err) = agent.run("seccomp", &["mkdir", "/tmp/blocked"], |s| {
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    assert_ne!(status, 0);
    assert!(err.contains("Operation not permitted"), "{err:?}");
    agent.stop();
}

/// The container's seccomp profile holds for every process that joins it, as with runc's
/// exec: kubelet's exec probes, `kubectl exec` and CRI ExecSync must not escape the pod's
/// profile. Both of libcontainer's install points are exercised: before the capability drop
/// (`noNewPrivileges` unset or false, the Kubernetes default) and last before execve (true).
#[test]
fn an_exec_runs_under_its_containers_seccomp_profile() {
    if !can_run("an_exec_runs_under_its_containers_seccomp_profile") {
        return;
    }
    let agent = Agent::start();
    agent
        .create("filtered", &["sleep", "100"], Stdio::new(), |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
            });
        })
        .unwrap();
    agent.start_container("filtered");
    // Kubernetes' default capabilities: no CAP_SYS_ADMIN, so a filter installed after the
    // drop would fail rather than pass silently.
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    // containerd leaves noNewPrivileges out when it is false (Kubernetes' default).
    for (exec_id, no_new_privileges) in [
        ("nnp-unset", None),
        ("nnp-false", Some(false)),
        ("nnp-true", Some(true)),
    ] {
        let mut req = ExecProcessRequest::new();
        req.container_id = "filtered".into();
        req.exec_id = exec_id.into();
        let mut process = json!({
            "args": ["sh", "-c", "grep Seccomp: /proc/self/status; mkdir /tmp/escaped"],
            "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        });
        if let Some(nnp) = no_new_privileges {
            process["noNewPrivileges"] = json!(nnp);
        }
        req.oci_process_json = serde_json::to_vec(&process).unwrap();
        req.stdio = Some(out_err()).into();
        agent.client.exec_process(ctx(), &req).unwrap();
        let out = read_all(agent.stream(Kind::Stdout, "filtered", exec_id));
        let err = read_all(agent.stream(Kind::Stderr, "filtered", exec_id));
        let status = agent.wait("filtered", exec_id).exit_status;
        assert_eq!(out, "Seccomp:\t2\n", "{exec_id}: {err}");
        assert_ne!(status, 0, "{exec_id}: mkdir ran unfiltered");
        assert!(
            err.contains("Operation not permitted"),
            "{exec_id}: {err:?}"
        );
    }
    assert!(
        !agent.rootfs_of("filtered").join("tmp/escaped").exists(),
        "an exec escaped the profile"
    );
    agent.signal("filtered", "", libc::SIGKILL, false).unwrap();
    agent.wait("filtered", "");
    agent.remove("filtered");
    agent.stop();
}

/// A container's init only receives the signals it handles. SIGTERM sent before the
/// program has installed its handler (a Stop right after Start, on a slow guest) is kept
/// and delivered once the handler is there, instead of being lost until the kill timeout.
#[test]
fn a_signal_sent_before_init_handles_it_arrives_once_it_does() {
    if !can_run("a_signal_sent_before_init_handles_it_arrives_once_it_does") {
        return;
    }
    let agent = Agent::start();
    let pid = agent
        .create(
            "late-trap",
            &[
                "sh",
                "-c",
                "sleep 1; trap 'exit 42' TERM; while :; do sleep 0.05; done",
            ],
            Stdio::new(),
            |_| {},
        )
        .unwrap();
    agent.start_container("late-trap");
    agent.signal("late-trap", "", libc::SIGTERM, false).unwrap();
    // Without re-delivery the container would run on: end it after 30 s so the test
    // fails with 137 instead of hanging.
    let (done, timeout) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if timeout.recv_timeout(Duration::from_secs(30)).is_err() {
            // SAFETY: kill has no memory effects; the container is still running (no
            // message came), so the PID is still its init's.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    });
    let status = agent.wait("late-trap", "").exit_status;
    done.send(()).ok();
    guard.join().unwrap();
    assert_eq!(status, 42, "the SIGTERM sent before the trap was lost");
    agent.remove("late-trap");
    agent.stop();
}

/// kubectl port-forward's guest end: a `tcp` stream is a connection to 127.0.0.1:PORT in
/// the agent's network namespace, both ways, each direction ending on its own; a port
/// with nothing listening is refused, naming it.
#[test]
fn a_tcp_stream_reaches_a_loopback_port_both_ways() {
    if !can_run("a_tcp_stream_reaches_a_loopback_port_both_ways") {
        return;
    }
    let agent = Agent::start();
    // The served agent has a network namespace of its own, as the VM's.
    let netns = std::path::PathBuf::from(format!("/proc/{}/ns/net", agent.pid()));
    let bind = || {
        hull_net::netns::run_in(&netns, || std::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap()
            .unwrap()
    };
    let server = bind();
    let port = server.local_addr().unwrap().port();
    let echo = std::thread::spawn(move || {
        let (mut c, _) = server.accept().unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        c.write_all(got.to_uppercase().as_bytes()).unwrap();
    });
    let mut s = agent.endpoint.open_stream(&Header::tcp(port)).unwrap();
    s.write_all(b"through the agent").unwrap();
    // Our end of input: the server's read ends, and it answers.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = String::new();
    s.read_to_string(&mut back).unwrap();
    echo.join().unwrap();
    assert_eq!(back, "THROUGH THE AGENT");

    let closed = bind();
    let unused = closed.local_addr().unwrap().port();
    drop(closed);
    let e = agent
        .endpoint
        .open_stream(&Header::tcp(unused))
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("127.0.0.1:{unused}")), "{e}");
    agent.stop();
}

#[test]
fn bad_input_is_refused_by_field_and_the_agent_carries_on() {
    if !can_run("bad_input_is_refused_by_field") {
        return;
    }
    let agent = Agent::start();
    let root = agent.rootfs("good");
    let good = spec(&root, &["true"]);
    let invalid = |id: &str, json: Vec<u8>, field: &str| {
        let (code, msg) = status(agent.create_raw(id, json, Stdio::new()).unwrap_err());
        assert_eq!(code, Code::INVALID_ARGUMENT, "{id}: {msg}");
        assert!(msg.contains(field), "{id}: {msg:?} does not name {field}");
    };
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut s = good.clone();
        edit(&mut s);
        serde_json::to_vec(&s).unwrap()
    };
    invalid("c1", b"{ not json".to_vec(), "oci_spec_json");
    invalid("../x", serde_json::to_vec(&good).unwrap(), "container_id");
    let outside = tempfile::tempdir().unwrap();
    invalid(
        "c2",
        with(&|s| s["root"]["path"] = json!(outside.path())),
        "root.path",
    );
    std::os::unix::fs::symlink("../../../../../../../etc", root.join("escape")).unwrap();
    invalid(
        "c3",
        with(&|s| {
            s["mounts"]
                .as_array_mut()
                .unwrap()
                .push(json!({"destination": "/escape/x", "type": "tmpfs", "source": "tmpfs"}))
        }),
        "mounts[",
    );
    invalid(
        "c4",
        with(&|s| s["linux"]["resources"] = json!({"memory": {"limit": -7}})),
        "linux.resources.memory.limit",
    );
    invalid(
        "c5",
        with(&|s| {
            s["process"]["rlimits"] =
                json!([{"type": "RLIMIT_NOFILE", "hard": u64::MAX, "soft": 1024}])
        }),
        "process.rlimits[0]",
    );
    invalid(
        "c6",
        with(&|s| s["process"]["args"] = json!([])),
        "process.args",
    );
    invalid(
        "c7",
        with(&|s| {
            s["linux"]["namespaces"]
                .as_array_mut()
                .unwrap()
                .push(json!({"type": "user", "path": "/proc/1/ns/user"}))
        }),
        "linux.namespaces[",
    );
    let (code, _) = status(
        agent
            .client
            .start_container(ctx(), &container_req("nope"))
            .unwrap_err(),
    );
    assert_eq!(code, Code::NOT_FOUND);
    let mut sig = SignalProcessRequest::new();
    sig.container_id = "nope".into();
    sig.signal = 999;
    assert_eq!(
        status(agent.client.signal_process(ctx(), &sig).unwrap_err()).0,
        Code::NOT_FOUND
    );
    let mut upd = UpdateContainerRequest::new();
    upd.container_id = "good".into();
    upd.resources_json = b"{}".to_vec();
    assert_eq!(
        status(agent.client.update_container(ctx(), &upd).unwrap_err()).0,
        Code::NOT_FOUND
    );
    // A container whose program does not exist fails alone.
    agent
        .create("missing", &["/bin/not-there"], Stdio::new(), |_| {})
        .ok();
    let mut reseed = ReseedRandomRequest::new();
    reseed.entropy = vec![1; 8];
    assert_eq!(
        status(agent.client.reseed_random(ctx(), &reseed).unwrap_err()).0,
        Code::INVALID_ARGUMENT
    );
    // Still serving, and still creating containers.
    agent.client.ping(ctx(), &PingRequest::new()).unwrap();
    let (status, out, _) = agent.run("after", &["echo", "still here"], |_| {});
    assert_eq!((status, out.as_str()), (0, "still here\n"));
    agent.stop();
}

#[test]
fn update_changes_limits_of_a_running_container() {
    if !can_run("update_changes_limits") {
        return;
    }
    let agent = Agent::start();
    agent
        .create("upd", &["sleep", "100"], Stdio::new(), |_| {})
        .unwrap();
    agent.start_container("upd");
    let mut upd = UpdateContainerRequest::new();
    upd.container_id = "upd".into();
    upd.resources_json =
        serde_json::to_vec(&json!({"pids": {"limit": 7}, "memory": {"limit": 64 << 20}})).unwrap();
    agent.client.update_container(ctx(), &upd).unwrap();
    let stats = agent
        .client
        .stats_container(ctx(), &container_req("upd"))
        .unwrap();
    assert_eq!(stats.pids.limit, 7);
    assert_eq!(stats.memory.limit_bytes, 64 << 20);
    upd.resources_json = serde_json::to_vec(&json!({"pids": {"limit": -3}})).unwrap();
    let (code, msg) = status(agent.client.update_container(ctx(), &upd).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert!(msg.contains("resources_json.pids.limit"), "{msg}");
    agent.stop();
}

#[test]
fn configure_network_sets_addresses_and_routes_the_containers_see() {
    if !can_run("configure_network") {
        return;
    }
    // `serve` runs in a network namespace of its own: this touches only that one.
    let agent = Agent::start();
    let mut lo = Interface::new();
    lo.name = "lo".into();
    lo.addresses = vec!["10.9.8.7/32".into()];
    lo.mtu = 9000;
    let mut route = Route::new();
    route.destination = "10.20.0.0/16".into();
    route.device = "lo".into();
    let mut req = ConfigureNetworkRequest::new();
    req.interfaces = vec![lo];
    req.routes = vec![route];
    agent.client.configure_network(ctx(), &req).unwrap();
    // A container without a network namespace of its own shares the sandbox's.
    let (exit, out, err) = agent.run("net", &["sh", "-c", "ip addr show lo; ip route"], |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network");
    });
    assert_eq!(exit, 0, "{err}");
    assert!(out.contains("inet 10.9.8.7/32"), "{out}");
    assert!(out.contains("mtu 9000"), "{out}");
    assert!(out.contains("10.20.0.0/16 dev lo"), "{out}");
    // The same again: the address exists, and the error says which and why.
    let (code, msg) = status(agent.client.configure_network(ctx(), &req).unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(
        msg.contains("10.9.8.7/32") && msg.contains("exists"),
        "{msg}"
    );
    req.interfaces[0].name = "nosuch0".into();
    let (code, _) = status(agent.client.configure_network(ctx(), &req).unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);

    // Identity after a restore: an interface found by name takes the MAC it is given.
    let in_agent_ns = |cmd: &str| {
        let out = std::process::Command::new("nsenter")
            .args(["-t", &agent.pid().to_string(), "-n", "sh", "-c", cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    in_agent_ns("ip tuntap add hull0 mode tap && ip link set hull0 address 02:00:00:00:00:01");
    let mut nic = Interface::new();
    nic.name = "hull0".into();
    nic.mac = "02:AA:BB:00:00:07".into();
    let mut req = ConfigureNetworkRequest::new();
    req.interfaces = vec![nic.clone()];
    agent.client.configure_network(ctx(), &req).unwrap();
    let link = in_agent_ns("ip link show hull0");
    assert!(link.contains("link/ether 02:aa:bb:00:00:07"), "{link}");
    // Found by that MAC alone from now on.
    nic.name.clear();
    nic.addresses = vec!["10.1.2.3/24".into()];
    req.interfaces = vec![nic];
    agent.client.configure_network(ctx(), &req).unwrap();
    let addrs = in_agent_ns("ip addr show hull0");
    assert!(addrs.contains("inet 10.1.2.3/24"), "{addrs}");
    agent.stop();
}

#[test]
fn oci_process_and_mount_settings_take_effect() {
    if !can_run("oci_process_and_mount_settings_take_effect") {
        return;
    }
    let agent = Agent::start();
    let shared = agent.dir.path().join("shared-data");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello.txt"), "from the host\n").unwrap();
    let hooks = agent.dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let hook = |name: &str| json!({"path": "/bin/sh", "args": ["sh", "-c", format!("echo ran > {}/{name}", hooks.display())]});
    let script = "\
        echo cwd=$(pwd); echo env=$GREETING; id; \
        echo nofile=$(ulimit -n); \
        grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status; \
        echo masked=$(wc -c < /etc/passwd); \
        grep ' /proc/sys ' /proc/mounts; \
        echo forward=$(cat /proc/sys/net/ipv4/ip_forward); \
        cat /data/hello.txt; grep ' /data ' /proc/mounts; \
        echo scratch > /scratch/f && echo tmpfs=$(cat /scratch/f); \
        ls /dev/pts/ptmx /dev/mqueue >/dev/null && echo devpts+mqueue=ok";
    let (status, out, err) = agent.run("oci", &["sh", "-c", script], |s| {
        s["process"]["cwd"] = json!("/tmp");
        s["process"]["env"] = json!(["PATH=/bin", "GREETING=hi"]);
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [10]});
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}]);
        s["process"]["noNewPrivileges"] = json!(true);
        let caps = json!(["CAP_CHOWN", "CAP_KILL"]);
        s["process"]["capabilities"] =
            json!({"bounding": caps, "effective": caps, "permitted": caps, "inheritable": caps, "ambient": caps});
        s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        s["linux"]["maskedPaths"].as_array_mut().unwrap().push(json!("/etc/passwd"));
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "bind", "source": shared, "options": ["rbind", "ro", "rprivate"]}));
        mounts.push(json!({"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", "size=1m"]}));
        s["hooks"] = json!({"createRuntime": [hook("createRuntime")], "poststart": [hook("poststart")], "poststop": [hook("poststop")]});
    });
    assert_eq!(status, 0, "stdout {out}\nstderr {err}");
    for want in [
        "cwd=/tmp",
        "env=hi",
        "uid=1000 gid=1000 groups=10",
        "nofile=256",
        "NoNewPrivs:\t1",
        // CAP_CHOWN (0) and CAP_KILL (5).
        "CapBnd:\t0000000000000021",
        "CapEff:\t0000000000000021",
        "masked=0",
        " /proc/sys proc ro,",
        "forward=1",
        "from the host",
        "tmpfs=scratch",
        "devpts+mqueue=ok",
    ] {
        assert!(
            out.contains(want),
            "{want:?} missing from:\n{out}\nstderr:\n{err}"
        );
    }
    let data = out
        .lines()
        .find(|l| l.contains(" /data "))
        .expect("/data is mounted");
    assert!(
        data.split_whitespace().nth(3).unwrap().starts_with("ro,"),
        "{data}"
    );
    for h in ["createRuntime", "poststart", "poststop"] {
        assert!(hooks.join(h).exists(), "the {h} hook did not run");
    }
    assert!(!shared.join("x").exists());
    agent.stop();
}

#[test]
fn a_pod_shares_hostname_files_and_pid_namespace() {
    if !can_run("a_pod_shares_hostname_files_and_pid_namespace") {
        return;
    }
    let mut sb = CreateSandboxRequest::new();
    sb.hostname = "pod-1".into();
    sb.hosts = "127.0.0.1 localhost\n10.0.0.2 pod-1".into();
    sb.resolv_conf = "nameserver 10.0.0.10".into();
    let agent = Agent::start_with(&sb);
    // A second sandbox in the same agent is refused.
    let (code, _) = status(agent.client.create_sandbox(ctx(), &sb).unwrap_err());
    assert_eq!(code, Code::ALREADY_EXISTS);
    // What containerd's CRI sends: the pause container gets new namespaces (and the
    // netns CNI made on the host); each container names the pause's by /proc path, with
    // the pid the runtime reported for it.
    let pause = agent
        .create(
            "pause",
            &["sh", "-c", "exec sleep 1000"],
            Stdio::new(),
            |s| {
                s["linux"]["namespaces"] = json!([
                    {"type": "pid"},
                    {"type": "network", "path": "/var/run/netns/cni-1234"},
                    {"type": "ipc"},
                    {"type": "uts"},
                    {"type": "mount"}
                ]);
                // A pod-level sysctl, which CRI sets on the sandbox: IPC-namespaced, so the
                // pod's containers see it by joining the pause's IPC namespace.
                s["linux"]["sysctl"] = json!({"kernel.shm_rmid_forced": "1"});
                s["hostname"] = json!("pod-1");
            },
        )
        .unwrap();
    agent.start_container("pause");
    let pod_namespaces = |s: &mut serde_json::Value| {
        s["linux"]["namespaces"] = json!([
            {"type": "pid", "path": format!("/proc/{pause}/ns/pid")},
            {"type": "network", "path": format!("/proc/{pause}/ns/net")},
            {"type": "ipc", "path": format!("/proc/{pause}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{pause}/ns/uts")},
            {"type": "mount"}
        ]);
    };
    let (exit, out, err) = agent.run(
        "app",
        &[
            "sh",
            "-c",
            "hostname; cat /etc/hosts /etc/resolv.conf; cat /proc/1/cmdline | tr '\\0' ' '; \
             echo; echo shm_rmid_forced=$(cat /proc/sys/kernel/shm_rmid_forced)",
        ],
        pod_namespaces,
    );
    assert!(
        out.contains("shm_rmid_forced=1"),
        "the pod's sysctl reaches its containers: {out}"
    );
    assert_eq!(exit, 0, "{err}");
    assert!(out.starts_with("pod-1\n"), "{out}");
    assert!(
        out.contains("10.0.0.2 pod-1") && out.contains("nameserver 10.0.0.10"),
        "{out}"
    );
    assert!(
        out.contains("sleep 1000"),
        "the app does not see the pause container's PID 1: {out}"
    );
    let mut reseed = ReseedRandomRequest::new();
    reseed.entropy = vec![7; 64];
    agent.client.reseed_random(ctx(), &reseed).unwrap();
    let (code, _) = status(
        agent
            .client
            .set_time(ctx(), &SetTimeRequest::new())
            .unwrap_err(),
    );
    assert_eq!(
        code,
        Code::FAILED_PRECONDITION,
        "serve must not set the host's clock"
    );
    agent
        .client
        .destroy_sandbox(ctx(), &protobuf::well_known_types::empty::Empty::new())
        .unwrap();
    assert!(
        agent.cgroup_dirs().iter().all(|d| !d.join("hull").exists()),
        "{:?}",
        agent.cgroup_dirs()
    );
    agent.stop();
}
